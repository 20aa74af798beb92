"""A sweep's results (`main.py sweep` logs each point to `<logs>/<experiment>/<point name>/version_N/`): one row per
point, the points' settings averaged over seeds, and the best setting per LoRA scope.

A point's name is its grid values, `learning_rate=0.0005,lora_scope=all,seed_everything=1` (titlegen.sweep.grid);
the report reads them back from the folder name, so it needs neither the sweep file nor titlegen.sweep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from titlegen.report.results import Comparison, Result, compare_pair, summarize
from titlegen.report.runs import Experiment, TestRun, newest_per_seed, read_test_runs

SEED_KEY = "seed_everything"
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass
class Point:
    """One point folder: its grid values, its newest test run per seed (none if it was never tested), their means."""

    name: str
    values: dict[str, Any]
    result: Result | None
    val_f1: float | None


@dataclass
class Setting:
    """The points that differ only in their seed, pooled: the mean over seeds is what "best" compares."""

    values: dict[str, Any]
    scope: str
    result: Result
    val_f1: float | None


@dataclass
class Sweep:
    """A sweep's points and settings; `comparisons` (filled by `compare_with_best`): each scope's best setting
    against each other setting of that scope."""

    experiment: str
    keys: list[str]
    points: list[Point]
    settings: list[Setting]
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.experiment).name

    def best(self) -> dict[str, Setting]:
        """Per LoRA scope, the setting with the highest mean validation F1 over its seeds: chosen on the validation
        split, so that the test F1 it reports is not the number that chose it. A scope whose settings have no
        validation F1 of their own (fits without a validation; a test-only sweep, whose points all test one fit) is
        chosen by its mean test F1."""
        scopes: dict[str, list[Setting]] = {}
        for setting in self.settings:
            scopes.setdefault(setting.scope, []).append(setting)
        best: dict[str, Setting] = {}
        for scope, members in scopes.items():
            fits = {run.fit.run_dir for m in members for run in m.result.runs if run.fit is not None}
            validated = [s for s in members if s.val_f1 is not None] if len(fits) > 1 else []
            tested = [s for s in members if "bertscore_f1" in s.result.estimates]
            if validated:
                best[scope] = max(validated, key=lambda s: s.val_f1)  # type: ignore[arg-type, return-value]
            elif tested:
                best[scope] = max(tested, key=lambda s: s.result.estimates["bertscore_f1"].mean)
        return dict(sorted(best.items()))

    def compare_with_best(self, resamples: int, permutations: int, seed: int) -> list[Comparison]:
        """Paired over the test titles (every point tests the same split): is the best setting better than each
        other one of its scope, or within noise? Fills and returns `comparisons`."""
        best = self.best()
        self.comparisons = [
            compare_pair(best[s.scope].result, s.result, resamples, permutations, seed)
            for s in self.settings
            if s.scope in best and s is not best[s.scope]
        ]
        return self.comparisons


def parse_value(text: str) -> Any:
    """A grid value as the point name shows it: a number where it reads as one, else the text."""
    if _NUMBER.fullmatch(text):
        number = float(text)
        return int(number) if re.fullmatch(r"[+-]?\d+", text) else number
    return text


def parse_point(name: str) -> dict[str, Any] | None:
    """`key=value,key=value` as a mapping; None for a folder that is not a point (no `=` in some part)."""
    parts = [part.split("=", 1) for part in name.split(",")]
    if not name or any(len(part) != 2 or not part[0] for part in parts):
        return None
    return {key: parse_value(value) for key, value in parts}


def _order(values: dict[str, Any], keys: list[str]) -> tuple:
    """Numbers in numeric order before text, key by key in the grid's order."""
    shown = [values.get(key) for key in keys]
    return tuple((0, v, "") if isinstance(v, int | float) else (1, 0, str(v)) for v in shown)


def _mean_val_f1(runs: list[TestRun]) -> float | None:
    values = [run.fit.stats.final_val_f1 for run in runs if run.fit and run.fit.stats.final_val_f1 is not None]
    return sum(values) / len(values) if values else None


def _scope(values: dict[str, Any], runs: list[TestRun]) -> str:
    found = values.get("lora_scope") or next((run.summary.get("lora_scope") for run in runs), None)
    return str(found) if found is not None else "—"


def load_sweep(logs: Path, experiment: str, resamples: int, seed: int) -> Sweep | None:
    """The sweep's points under `logs/experiment`; None where that folder holds no point."""
    folder = logs / experiment
    folders = sorted(path for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []
    found = [(path, values) for path in folders if (values := parse_point(path.name)) is not None]
    if not found:
        return None
    keys = list(dict.fromkeys(key for _, values in found for key in values))
    points = []
    for path, values in found:
        runs = newest_per_seed(read_test_runs(path, logs))
        result = summarize(Experiment(path.name, runs), resamples, seed, bootstrap=False) if runs else None
        points.append(Point(path.name, values, result, _mean_val_f1(runs)))
    points.sort(key=lambda p: _order(p.values, keys))
    groups: dict[tuple, list[Point]] = {}
    for point in points:
        if point.result is not None:
            setting = {k: v for k, v in point.values.items() if k != SEED_KEY}
            groups.setdefault(tuple(sorted((k, str(v)) for k, v in setting.items())), []).append(point)
    settings = []
    for members in groups.values():
        values = {k: v for k, v in members[0].values.items() if k != SEED_KEY}
        # Points of a setting differ in their seed: their runs are distinct seeds already.
        runs = [run for point in members for run in point.result.runs]  # type: ignore[union-attr]
        label = ",".join(f"{k}={v}" for k, v in values.items())
        result = summarize(Experiment(label, runs), resamples, seed)
        settings.append(Setting(values, _scope(values, runs), result, _mean_val_f1(runs)))
    return Sweep(experiment, keys, points, settings)
