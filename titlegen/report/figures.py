"""The report's PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from titlegen.report.results import Result
    from titlegen.report.sweeps import Sweep

LEARNING_RATE = "learning_rate"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; must precede the pyplot import on machines without a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def f1_bars(results: list[Result], path: Path) -> Path:
    """Test BERTScore F1 of each experiment (mean over its seeds), with its 95% interval as error bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(results), 3.6))
    estimates = [result.estimates["bertscore_f1"] for result in results]
    f1 = [e.mean for e in estimates]
    lows = [e.low if e.low is not None else e.mean for e in estimates]
    highs = [e.high if e.high is not None else e.mean for e in estimates]
    errors = [np.subtract(f1, lows), np.subtract(highs, f1)]
    bars = ax.bar([result.name for result in results], f1, yerr=errors, capsize=6, color="#4c78a8")
    ax.bar_label(bars, labels=[f"{value:.3f}" for value in f1], label_type="center", color="white")
    ax.set_ylabel("test BERTScore F1")
    ax.set_ylim(0, min(1.0, max(max(highs) * 1.15, 0.05)))
    ax.set_title("Test BERTScore F1, 95% interval (t over seeds, or bootstrap over titles for one run)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def validation_curves(results: list[Result], path: Path) -> Path:
    """Validation BERTScore F1 and loss against the training step, one line per fit run, side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = [("val/bertscore_f1", "validation BERTScore F1"), ("val/loss", "validation loss")]
    for ax, (tag, label) in zip(axes, panels, strict=True):
        for result in results:
            for run in result.runs:
                points = run.fit.stats.curves.get(tag, []) if run.fit else []
                if points:
                    name = result.name if len(result.runs) == 1 else f"{result.name} (seed {run.seed})"
                    ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no fit run with validations", ha="center", va="center", transform=ax.transAxes)
    return _save(plt, fig, path)


def sweep_lines(sweep: Sweep) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per line (the grid's other values, e.g. `lora_scope=all`), (learning rate, mean test F1 over seeds, lowest
    and highest seed's F1), by learning rate; settings without a learning rate or a test F1 are left out."""
    lines: dict[str, list[tuple[float, float, float, float]]] = {}
    for setting in sweep.settings:
        rate = setting.values.get(LEARNING_RATE)
        f1 = setting.result.estimates.get("bertscore_f1")
        per_seed = [value for run in setting.result.runs if (value := run.value("bertscore_f1")) is not None]
        if not isinstance(rate, int | float) or f1 is None or not per_seed:
            continue
        label = ", ".join(f"{k}={v}" for k, v in setting.values.items() if k != LEARNING_RATE) or "all points"
        lines.setdefault(label, []).append((float(rate), f1.mean, min(per_seed), max(per_seed)))
    return {label: sorted(points) for label, points in lines.items()}


def sweep_learning_rate(sweep: Sweep, path: Path) -> Path | None:
    """Test F1 against the learning rate (log axis), one line per scope (and other grid values), error bars from the
    lowest to the highest seed; None, and no file, where the grid has no learning rate."""
    lines = sweep_lines(sweep)
    if LEARNING_RATE not in sweep.keys or not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, points in lines.items():
        rate, mean, low, high = (np.array(column) for column in zip(*points, strict=True))
        ax.errorbar(rate, mean, yerr=[mean - low, high - mean], marker="o", capsize=4, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("test BERTScore F1")
    ax.set_title(f"{sweep.experiment}: mean over seeds, bars from the lowest to the highest seed", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
