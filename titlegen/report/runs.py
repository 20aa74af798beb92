"""The runs a report reads: each experiment's newest `test` run (metrics.json, predictions.jsonl) and the `fit` run
whose checkpoint it tested (TensorBoard scalars, adapter size).

Scores and titles come from the test run; training time, tokens/s, peak GPU memory, validation curves and adapter
size from the fit run that metrics.json names, read from its event files and adapter/ folder.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EXPERIMENTS = ("baseline", "full_lora", "last_layer_lora")
SCORES = ("precision", "recall", "f1")
CURVES = ("val/bertscore_f1", "val/loss")


@dataclass
class FitStats:
    """What the fit run of a tested checkpoint recorded; None where it recorded nothing (peak memory on a CPU)."""

    run_dir: Path
    seconds: float | None = None
    tokens_per_sec: float | None = None
    peak_memory_gib: float | None = None
    adapter_bytes: int | None = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


@dataclass
class ExperimentRun:
    """The newest test run of one experiment, with its fit run's statistics."""

    experiment: str
    run_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    fit: FitStats | None
    ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)

    def score(self, name: str) -> float:
        return float(self.summary["metrics"][f"test/bertscore_{name}"])


def version_number(run_dir: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", run_dir.name)
    return int(match.group(1)) if match else -1


def newest_test_run(logs: Path, experiment: str) -> Path | None:
    """The highest-numbered version folder of the experiment that holds a `test` run's metrics.json."""
    runs = [path.parent for path in (logs / experiment).glob("*/metrics.json")]
    return max(runs, key=version_number, default=None)


def read_scalars(run_dir: Path) -> list[dict[str, list[tuple[int, float, float]]]]:
    """The scalars of each TensorBoard event file in the run folder (one file per process that logged there, so a
    resumed fit adds one): [{tag: [(step, value, wall time)]}], in the order the files were written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = []
    for events in sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name)):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        files.append({tag: [(e.step, e.value, e.wall_time) for e in accumulator.Scalars(tag)] for tag in tags})
    return files


def fit_run_dir(checkpoint: str | None, logs: Path) -> Path | None:
    """The run folder of a tested checkpoint (`<run>/checkpoints/x.ckpt`).

    A relative path (relative to where `test` ran, e.g. `lightning_logs/full_lora/version_0/...`) is looked up as
    `<experiment>/<version>` inside `logs` first, so a report of logs copied elsewhere reads their own fit runs.
    """
    if not checkpoint:
        return None
    path = Path(checkpoint)
    candidates = [path.parent.parent]
    if len(path.parents) > 2:
        inside_logs = logs / path.parents[2].name / path.parents[1].name
        candidates.insert(0 if not path.is_absolute() else 1, inside_logs)
    return next((c for c in candidates if c.is_dir()), None)


def fit_stats(run_dir: Path) -> FitStats:
    files = read_scalars(run_dir)
    # Per event file, from on_fit_start (trainable parameters, logged at step 0) to its last value: training and
    # validations, not model loading; summed over files, so the pause before a resume does not count.
    spans = [[wall for series in scalars.values() for _, _, wall in series] for scalars in files]
    values = lambda tag: [value for scalars in files for _, value, _ in scalars.get(tag, [])]  # noqa: E731
    tokens, memory = values("perf/tokens_per_sec"), values("perf/peak_memory_gib")
    # A resumed run may log a step again: the later file's value wins.
    curves = {
        tag: sorted({step: v for scalars in files for step, v, _ in scalars.get(tag, [])}.items()) for tag in CURVES
    }
    seconds = sum(max(walls) - min(walls) for walls in spans if walls)
    adapter = sum(f.stat().st_size for f in (run_dir / "adapter").glob("*.safetensors"))
    return FitStats(
        run_dir=run_dir,
        seconds=seconds or None,
        tokens_per_sec=float(np.mean(tokens)) if tokens else None,
        peak_memory_gib=max(memory) if memory else None,
        adapter_bytes=adapter or None,
        curves=curves,
    )


def bootstrap_intervals(rows: list[dict[str, Any]], resamples: int, seed: int) -> dict[str, tuple[float, float] | None]:
    """95% percentile intervals of mean P, R and F1, resampling titles with replacement (the same resamples for all
    three); None for a score the rows lack (test runs made before per-sample P and R were written)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(rows), size=(resamples, len(rows)))
    intervals: dict[str, tuple[float, float] | None] = {}
    for name in SCORES:
        values = [row.get(f"bertscore_{name}") for row in rows]
        if not values or any(v is None for v in values):
            intervals[name] = None
            continue
        means = np.asarray(values, dtype=float)[picks].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        intervals[name] = (float(low), float(high))
    return intervals


def load_run(logs: Path, experiment: str, resamples: int, seed: int) -> ExperimentRun | None:
    run_dir = newest_test_run(logs, experiment)
    if run_dir is None:
        return None
    summary = json.loads((run_dir / "metrics.json").read_text())
    predictions = run_dir / "predictions.jsonl"
    lines = predictions.read_text().splitlines() if predictions.is_file() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    fit_dir = fit_run_dir(summary.get("checkpoint"), logs)
    run = ExperimentRun(experiment, run_dir, summary, rows, fit_stats(fit_dir) if fit_dir else None)
    run.ci = bootstrap_intervals(rows, resamples, seed)
    return run


def choose_examples(runs: list[ExperimentRun], count: int, seed: int) -> list[str]:
    """Ids every run titled, `count` of them chosen with the seed (the same whichever runs exist), sorted."""
    common = sorted(set.intersection(*({row["id"] for row in run.rows} for run in runs))) if runs else []
    return sorted(random.Random(seed).sample(common, min(count, len(common))))
