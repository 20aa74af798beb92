"""The runs a report reads: the `test` runs of an experiment (metrics.json, predictions.jsonl), each with the `fit`
run whose checkpoint it tested (hparams.yaml, config.yaml, TensorBoard events, adapter/).

An experiment's result is the newest test run per training seed: `fit --seed_everything S` then `test`, repeated
with other seeds, leaves several fit/test pairs in one experiment folder. The seed is the fit run's (the test
process's own seed does not change what a checkpoint generates under greedy decoding); experiments without a fit run
(baseline, first_sentence) have no training seed and keep only their newest test run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from titlegen.errors import DataError
from titlegen.report.events import FitStats, fit_stats

EXPERIMENTS = ("baseline", "first_sentence", "full_lora", "last_layer_lora")
# metrics.json's means (`test/<name>`), in the order tables show them, with their column labels.
METRICS = {
    "bertscore_f1": "BERTScore F1",
    "bertscore_precision": "P",
    "bertscore_recall": "R",
    "rouge_l": "ROUGE-L",
    "title_words": "words",
    "copy_rate": "copy rate",
    "stop_rate": "stop rate",
}
# The predictions.jsonl field behind each mean where its name differs.
_SAMPLE_FIELD = {"copy_rate": "copied", "stop_rate": "stopped"}


class _LenientLoader(yaml.SafeLoader):
    """Safe loading that reads a Python-object tag (hparams.yaml of an object-valued hyperparameter) as None
    instead of failing the whole file: the report only wants its plain values."""


_LenientLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML file; empty where it is missing or unreadable (older or interrupted runs)."""
    try:
        data = yaml.load(path.read_text(), Loader=_LenientLoader)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class FitRun:
    """The run folder of a tested checkpoint: the module's hyperparameters, LightningCLI's resolved config and what
    its TensorBoard events recorded (read on first use: event files are the slow part of a report)."""

    run_dir: Path
    hparams: dict[str, Any]
    config: dict[str, Any]
    _stats: FitStats | None = field(default=None, repr=False)

    @property
    def seed(self) -> Any:
        return self.config.get("seed_everything")

    @property
    def stats(self) -> FitStats:
        if self._stats is None:
            self._stats = fit_stats(self.run_dir)
        return self._stats

    def setting(self, section: str, key: str) -> Any:
        """`config.yaml`'s `section.key`, else hparams.yaml's `key` (which merges the model's and data's)."""
        value = (self.config.get(section) or {}).get(key)
        return self.hparams.get(key) if value is None else value


@dataclass
class TestRun:
    """One `test` run folder: its summary (metrics.json), per-title rows (predictions.jsonl, read on first use: only
    the runs a report keeps need them) and the fit run it tested (None for the experiments that need none, or where
    that folder is gone)."""

    __test__ = False  # not a pytest test class, whatever its name

    run_dir: Path
    summary: dict[str, Any]
    fit: FitRun | None

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / "predictions.jsonl")

    @property
    def seed(self) -> Any:
        return self.fit.seed if self.fit else None

    @property
    def samples(self) -> int:
        return int(self.summary.get("samples") or len(self.rows))

    def sample_values(self, metric: str) -> np.ndarray | None:
        """One value per title (the stop rate's only over generated titles); None where predictions.jsonl lacks the
        field (runs made before it was written)."""
        name = _SAMPLE_FIELD.get(metric, metric)
        if not self.rows or any(name not in row for row in self.rows):
            return None
        values = [row[name] for row in self.rows if row[name] is not None]
        return np.asarray(values, dtype=float) if values else None

    def value(self, metric: str) -> float | None:
        """metrics.json's mean, else the mean of the per-title values, else None (the metric was not measured)."""
        recorded = (self.summary.get("metrics") or {}).get(f"test/{metric}")
        if recorded is not None:
            return float(recorded)
        values = self.sample_values(metric)
        return float(values.mean()) if values is not None else None

    def by_id(self, metric: str) -> dict[str, float] | None:
        name = _SAMPLE_FIELD.get(metric, metric)
        if not self.rows or any(row.get(name) is None for row in self.rows):
            return None
        return {row["id"]: float(row[name]) for row in self.rows}


@dataclass
class Experiment:
    """The runs an experiment's result is made of: its newest test run per training seed, sorted by seed."""

    name: str
    runs: list[TestRun]

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs if run.seed is not None]

    def per_title(self, metric: str = "bertscore_f1") -> dict[str, float] | None:
        """Per test id, the metric averaged over the seeds; only ids every seed's run titled; None where a run has no
        per-title values."""
        tables = [run.by_id(metric) for run in self.runs]
        if not tables or any(table is None for table in tables):
            return None
        ids = set.intersection(*(set(table) for table in tables))  # type: ignore[union-attr]
        return {i: float(np.mean([table[i] for table in tables])) for i in sorted(ids)}  # type: ignore[index]


def version_number(run_dir: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", run_dir.name)
    return int(match.group(1)) if match else -1


def fit_run_dir(checkpoint: str | None, logs: Path) -> Path | None:
    """The run folder of a tested checkpoint (`<run>/checkpoints/x.ckpt`).

    metrics.json names the checkpoint as `test` saw it, e.g. relative to where it ran
    (`lightning_logs/full_lora/version_0/...`, or `lightning_logs/sweeps/lr_scope/<point>/version_0/...`), so the
    run's trailing folders are looked up inside `logs` first, longest first: a report of logs copied elsewhere reads
    their own fit runs. An absolute path that still exists wins.
    """
    if not checkpoint:
        return None
    run = Path(checkpoint).parent.parent
    parts = run.parts[1:] if run.is_absolute() else run.parts
    inside_logs = [logs.joinpath(*parts[-k:]) for k in range(len(parts), 1, -1)]
    candidates = [run, *inside_logs] if run.is_absolute() else [*inside_logs, run]
    return next((c for c in candidates if c.is_dir()), None)


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{where}: not valid JSON ({err.msg}, column {err.colno}). Fix: run `main.py test` for that run again,"
            " or move its folder out of the logs."
        ) from err


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; none where it is missing (a test run made before predictions were written)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [_json(line, f"{path}:{number}") for number, line in enumerate(lines, start=1) if line.strip()]


def read_test_run(run_dir: Path, logs: Path) -> TestRun:
    summary = _json((run_dir / "metrics.json").read_text(encoding="utf-8"), str(run_dir / "metrics.json"))
    if not isinstance(summary, dict):
        raise DataError(f"{run_dir / 'metrics.json'}: expected a JSON object. Fix: run `main.py test` again.")
    fit_dir = fit_run_dir(summary.get("checkpoint"), logs)
    fit = FitRun(fit_dir, read_yaml(fit_dir / "hparams.yaml"), read_yaml(fit_dir / "config.yaml")) if fit_dir else None
    return TestRun(run_dir, summary, fit)


def read_test_runs(folder: Path, logs: Path) -> list[TestRun]:
    """Every test run directly under `folder` (its `version_*/metrics.json`), oldest first."""
    dirs = sorted((path.parent for path in folder.glob("version_*/metrics.json")), key=version_number)
    return [read_test_run(run_dir, logs) for run_dir in dirs]


def newest_per_seed(runs: list[TestRun]) -> list[TestRun]:
    """The newest test run (highest version number) of each training seed, sorted by seed; runs without a seed
    count as one more seed (a retest of the baseline replaces the older one)."""
    newest: dict[str, TestRun] = {}
    for run in sorted(runs, key=lambda r: version_number(r.run_dir)):
        newest[json.dumps(run.seed, default=str)] = run
    return sorted(newest.values(), key=_seed_order)


def _seed_order(run: TestRun) -> tuple[bool, bool, float, str]:
    """Numeric seeds in numeric order, then any other, then the run without one."""
    numeric = isinstance(run.seed, int | float)
    return run.seed is None, not numeric, float(run.seed) if numeric else 0.0, str(run.seed)


def load_experiment(logs: Path, name: str) -> Experiment | None:
    runs = newest_per_seed(read_test_runs(logs / name, logs))
    return Experiment(name, runs) if runs else None
