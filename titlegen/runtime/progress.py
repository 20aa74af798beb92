"""A progress bar whose total is the batches this epoch will train, so that its count and time left are right."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


class _StepsTotal:
    """A progress bar whose training total is what this epoch will train: with `max_steps` below the epoch's
    batches (Lightning caps it only when `max_epochs` is -1), the steps left times the batches per step."""

    trainer: L.Trainer

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches  # type: ignore[misc]
        trainer = self.trainer
        if trainer.max_steps is None or trainer.max_steps < 0:
            return total
        left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        return min(total, max(left, 0))


class StepsRichProgressBar(_StepsTotal, RichProgressBar):
    pass


class StepsTQDMProgressBar(_StepsTotal, TQDMProgressBar):
    pass


def use_steps_progress_bar(trainer: L.Trainer) -> None:
    """Swap Lightning's default progress bar for the same one with the right total (a user's own bar stays)."""
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[index] = _copy_settings(callback, StepsRichProgressBar())
        elif type(callback) is TQDMProgressBar:
            trainer.callbacks[index] = _copy_settings(callback, StepsTQDMProgressBar())


def _copy_settings(old: Any, new: Any) -> Any:
    new.__dict__.update(old.__dict__)
    return new
