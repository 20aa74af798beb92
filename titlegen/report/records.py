"""summary.json: the numbers of summary.md as plain data, unrounded, for scripts and later comparisons."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from titlegen.report.document import Report
from titlegen.report.results import Comparison, Result, comparability, fit_summary, settings
from titlegen.report.stats import Estimate
from titlegen.report.sweeps import Sweep


def _estimate(found: Estimate) -> dict[str, Any]:
    return {"mean": found.mean, "low": found.low, "high": found.high, "interval": found.method, "n": found.n}


def _plain(value: Any) -> Any:
    """A seed or grid value as JSON takes it (YAML may give other scalars)."""
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def _result(result: Result) -> dict[str, Any]:
    return {
        "seeds": [_plain(seed) for seed in result.experiment.seeds],
        "runs": [
            {
                "test_run": str(run.run_dir),
                "fit_run": str(run.fit.run_dir) if run.fit else None,
                "seed": _plain(run.seed),
                "titles": run.samples,
                "metrics": {metric: run.value(metric) for metric in result.estimates},
            }
            for run in result.runs
        ],  # fmt: skip
        "metrics": {metric: _estimate(found) for metric, found in result.estimates.items()},
        "hyperparameters": settings(result),
        "fit": fit_summary(result),
    }


def _comparisons(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    return [{"a": c.a, "b": c.b, **(asdict(c.test) if c.test else {"why": c.why})} for c in comparisons]


def _sweep(sweep: Sweep) -> dict[str, Any]:
    return {
        "keys": sweep.keys,
        "points": [
            {
                "name": point.name,
                "values": {k: _plain(v) for k, v in point.values.items()},
                **(_result(point.result) if point.result else {"runs": []}),
                "val_f1": point.val_f1,
            }
            for point in sweep.points
        ],  # fmt: skip
        "best": {
            scope: {
                "values": {k: _plain(v) for k, v in best.values.items()},
                **_result(best.result),
                "val_f1": best.val_f1,
            }
            for scope, best in sweep.best().items()
        },  # fmt: skip
        "against_best": _comparisons(sweep.comparisons),
    }


def summary(report: Report) -> dict[str, Any]:
    return {
        "logs": str(report.logs),
        "bootstrap_resamples": report.resamples,
        "permutations": report.permutations,
        "seed": report.seed,
        "experiments": {result.name: _result(result) for result in report.results},
        "comparisons": _comparisons(report.comparisons),
        "comparability": comparability(report.results),
        "sweeps": {sweep.experiment: _sweep(sweep) for sweep in report.sweeps},
        "missing": {"experiments": report.missing_experiments, "sweeps": report.missing_sweeps},
        "examples": report.examples,
        "figures": sorted(report.figures),
    }
