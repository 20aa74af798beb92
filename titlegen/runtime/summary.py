"""The lines that end `fit` and `test`: where the logs, checkpoints, adapter and metrics are, and the final F1."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


def _shown(path: str | Path | None) -> str:
    """A path relative to the working directory when it is inside it (shorter, and what a user types)."""
    if not path:
        return "none"
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _metric(trainer: L.Trainer, name: str) -> str:
    value = trainer.callback_metrics.get(name)
    return f"{float(value):.4f}" if value is not None else "not measured"


def fit_summary(trainer: L.Trainer, log_dir: Path) -> str:
    """What a finished `fit` wrote to `log_dir` (`runs.run_dir`), ending with one line that gives its final validation
    F1."""
    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or None
    last = getattr(checkpoint, "last_model_path", "") or None
    adapter = log_dir / "adapter" if (log_dir / "adapter").is_dir() else None
    save_dir = getattr(trainer.logger, "save_dir", None)
    lines = [
        f"  logs:        {_shown(log_dir)}" + (f"  (tensorboard --logdir {_shown(save_dir)})" if save_dir else ""),
        f"  checkpoints: best {_shown(best)}, last {_shown(last)}",
        f"  adapter:     {_shown(adapter)}",
        f"fit done: {trainer.global_step} steps, val/bertscore_f1 {_metric(trainer, 'val/bertscore_f1')}"
        f" (val/loss {_metric(trainer, 'val/loss')})",
    ]
    return "\n".join(lines)


def test_summary(trainer: L.Trainer, log_dir: Path) -> str:
    """What a finished `test` wrote to `log_dir`, ending with one line that gives its test F1."""
    metrics, predictions = log_dir / "metrics.json", log_dir / "predictions.jsonl"
    lines = [
        f"  metrics:     {_shown(metrics)}",
        f"  predictions: {_shown(predictions)}",
        f"  checkpoint:  {_shown(trainer.ckpt_path)}",
        f"test done: test/bertscore_f1 {_metric(trainer, 'test/bertscore_f1')}"
        f" (test/loss {_metric(trainer, 'test/loss')})",
    ]
    return "\n".join(lines)
