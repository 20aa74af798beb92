"""`python main.py report`: the study's comparison, from each experiment's newest `test` run under lightning_logs/.

Scores and titles come from the test run (metrics.json, predictions.jsonl); training time, tokens/s, peak GPU
memory, validation curves and adapter size from the `fit` run whose checkpoint it tested (metrics.json names it),
read from that run's TensorBoard event files and adapter/ folder, so runs made before this command existed report
too.
"""

from __future__ import annotations

import argparse
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


# ----------------------------------------------------------------------------------------------- markdown
def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _score(run: ExperimentRun, name: str) -> str:
    interval = run.ci.get(name)
    bounds = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else " (no per-sample scores)"
    return f"{run.score(name):.3f}{bounds}"


def table(runs: list[ExperimentRun]) -> list[str]:
    lines = [
        "| experiment | test run | titles | BERTScore P [95% CI] | BERTScore R [95% CI] | BERTScore F1 [95% CI] |"
        " trainable params | training time | train tokens/s | peak GPU memory | adapter size |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        fit = run.fit or FitStats(run_dir=Path())
        cells = [
            f"**{run.experiment}**", run.run_dir.name, str(run.summary["samples"]),
            *(_score(run, name) for name in SCORES), f"{run.summary['trainable_params']:,}", _duration(fit.seconds),
            f"{fit.tokens_per_sec:,.0f}" if fit.tokens_per_sec else "—",
            f"{fit.peak_memory_gib:.2f} GiB" if fit.peak_memory_gib else "—",
            f"{fit.adapter_bytes / 1e6:.1f} MB" if fit.adapter_bytes else "—",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def examples(runs: list[ExperimentRun], ids: list[str], abstract_chars: int = 500) -> list[str]:
    """Each abstract (cut), then its reference and every run's title side by side."""
    by_run = [{row["id"]: row for row in run.rows} for run in runs]
    lines = []
    for number, sample_id in enumerate(ids, start=1):
        abstract = next((text for rows in by_run if (text := rows[sample_id].get("abstract"))), "(not recorded)")
        if len(abstract) > abstract_chars:
            abstract = abstract[:abstract_chars].rsplit(" ", 1)[0] + " …"
        titles = [_cell(rows[sample_id]["generated"]) or "*(empty)*" for rows in by_run]
        lines += [f"### {number}. `{sample_id}`", "", f"> {_cell(abstract)}", ""]
        lines += ["| reference | " + " | ".join(run.experiment for run in runs) + " |", "|---" * (len(runs) + 1) + "|"]
        lines += [f"| {_cell(by_run[0][sample_id]['reference'])} | " + " | ".join(titles) + " |", ""]
    return lines


def write_report(
    logs: Path, out: Path, experiments: list[str], resamples: int = 1000, seed: int = 0, count: int = 5
) -> Path:
    """Write out/summary.md, out/f1.png and out/val_curves.png; returns the summary's path."""
    from titlegen import figures

    loaded = {name: load_run(logs, name, resamples, seed) for name in experiments}
    runs = [run for run in loaded.values() if run is not None]
    missing = [name for name, run in loaded.items() if run is None]
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# titlegen: the study's report", ""]
    lines += [
        f"Newest `test` run of each experiment under `{logs}`, made by `python main.py report`. Intervals: 95%"
        f" percentile bootstrap over the test titles ({resamples} resamples, seed {seed}).",
        "",
    ]
    if runs:
        lines += table(runs) + [""]
        for label, value in (("base model", lambda s: s.get("model_name")),
                             ("BERTScore", lambda s: (s.get("bertscore") or {}).get("hash"))):  # fmt: skip
            values = sorted({str(value(run.summary)) for run in runs})
            warning = " — **the runs differ: their scores are not comparable**" if len(values) > 1 else ""
            lines.append(f"- {label}: " + "; ".join(f"`{v}`" for v in values) + warning)
        lines += [
            "- training time: the fit run's wall clock from its first to its last logged value (training and"
            " validations, not model loading); train tokens/s: mean of its `perf/tokens_per_sec` (real tokens, no"
            " padding); peak GPU memory: max of its `perf/peak_memory_gib` (logged on CUDA only); adapter size: its"
            " `adapter/*.safetensors`. A dash: the run recorded none (the baseline has no fit run).",
            "",
        ]
        figures.f1_bars(runs, out / "f1.png")
        figures.validation_curves(runs, out / "val_curves.png")
        lines += ["![BERTScore F1 with 95% intervals](f1.png)", "", "![Validation curves](val_curves.png)", ""]
    if missing:
        lines += ["## Missing", ""]
        lines += [
            f"- **{name}**: no `test` results (`{logs / name}/version_*/metrics.json`). Fix: `python main.py test"
            f" --config {name}.yaml` (after `fit` for a LoRA experiment)."
            for name in missing
        ]
        lines.append("")
    ids = choose_examples(runs, count, seed)
    if ids:
        lines += ["## Examples", "", f"{len(ids)} test abstracts every run titled, chosen with seed {seed}.", ""]
        lines += examples(runs, ids)
    summary = out / "summary.md"
    summary.write_text("\n".join(lines))
    return summary


def main(args: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="main.py report",
        description="Compare the experiments' newest `test` runs: writes OUT/summary.md (table with bootstrap"
        " intervals, examples) and OUT/f1.png, OUT/val_curves.png.",
    )
    parser.add_argument("--logs", type=Path, default=Path("lightning_logs"), help="the runs' save_dir")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for summary.md and the figures")
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), help="experiment (logger) names")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples and of the example choice")
    parser.add_argument("--examples", type=int, default=5, help="example abstracts shown with every run's title")
    options = parser.parse_args(args)
    if options.bootstrap < 1:
        parser.error(f"--bootstrap {options.bootstrap}: need at least 1 resample (e.g. 1000)")
    summary = write_report(options.logs, options.out, options.experiments, options.bootstrap, options.seed,
                           options.examples)  # fmt: skip
    print(f"Report written to {summary}")
    return summary
