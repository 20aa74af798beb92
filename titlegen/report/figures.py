"""The report's PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from titlegen.report.runs import ExperimentRun


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; must precede the pyplot import on machines without a display
    import matplotlib.pyplot as plt

    return plt


def f1_bars(runs: list[ExperimentRun], path: Path) -> Path:
    """Test BERTScore F1 of each experiment, with its 95% bootstrap interval as error bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(runs), 3.6))
    f1 = [run.score("f1") for run in runs]
    intervals = [run.ci.get("f1") or (value, value) for run, value in zip(runs, f1, strict=True)]
    errors = [[value - low for value, (low, _) in zip(f1, intervals, strict=True)],
              [high - value for value, (_, high) in zip(f1, intervals, strict=True)]]  # fmt: skip
    bars = ax.bar([run.experiment for run in runs], f1, yerr=errors, capsize=6, color="#4c78a8")
    ax.bar_label(bars, labels=[f"{value:.3f}" for value in f1], label_type="center", color="white")
    ax.set_ylabel("test BERTScore F1")
    ax.set_ylim(0, min(1.0, max(high for _, high in intervals) * 1.15))
    samples = sorted({run.summary["samples"] for run in runs})
    ax.set_title(f"Test BERTScore F1, 95% bootstrap interval ({'/'.join(map(str, samples))} titles)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def validation_curves(runs: list[ExperimentRun], path: Path) -> Path:
    """Validation BERTScore F1 and loss against the training step, one line per fit run, side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = [("val/bertscore_f1", "validation BERTScore F1"), ("val/loss", "validation loss")]
    for ax, (tag, label) in zip(axes, panels, strict=True):
        for run in runs:
            points = run.fit.curves.get(tag, []) if run.fit else []
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=run.experiment)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no fit run with validations", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
