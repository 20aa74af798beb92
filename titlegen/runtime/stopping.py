"""Stopping a fit cleanly: on SIGINT/SIGTERM with a resumable last.ckpt, on a non-finite loss with good weights.

Both decisions are read on the host one step late where that costs nothing in what they guarantee
(`readback.Deferred`). A read in the step that computes the value waits for the GPU, and the GPU then idles while
the host prepares the next step: with a 0.5B model a fifth of each step on one GPU, more under DDP.
- A non-finite loss: the bad step's update is skipped on the device (the fused optimizer's `found_inf`, as
  GradScaler uses), and the run stops before the next step's update.
- A signal, under DDP: the ranks decide together at the step after the one during which it came.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from titlegen.errors import TitleGenError
from titlegen.perf import Deferred
from titlegen.runtime import patches

RESUME_HINT = "run the same `fit` command again with `--ckpt_path last`"


class TrainingInterrupted(SystemExit):
    """`fit` stopped on SIGINT/SIGTERM after saving a resumable checkpoint; the message says how to resume."""


class NonFiniteLossError(TitleGenError, RuntimeError):
    """The training loss is NaN or infinite; raised before any update from it, so the saved weights are still good.
    Not the user's mistake as such, but one they can act on: the message says what to change."""

    exit_status = 1


def save_last_checkpoint(trainer: L.Trainer) -> Path | None:
    """Save the trainer's full state (weights, optimizer, scheduler, loops, datamodule) as the checkpoint callback's
    `last.ckpt`, the file that `fit --ckpt_path last` resumes from. Every rank must call it (the save synchronizes).
    """
    callback = trainer.checkpoint_callback
    if trainer.fast_dev_run or callback is None or getattr(callback, "dirpath", None) is None:
        return None
    metrics = {**trainer.callback_metrics, "epoch": torch.tensor(trainer.current_epoch)}
    metrics["step"] = torch.tensor(trainer.global_step)
    path = callback.format_checkpoint_name(metrics, callback.CHECKPOINT_NAME_LAST)
    # Recorded in the callback's own state, so a resumed run overwrites this file instead of writing last-v1.ckpt.
    callback.last_model_path = path
    trainer.save_checkpoint(path, weights_only=False)  # the full state: optimizer, scheduler, loops
    return Path(path)


def distributed(trainer: L.Trainer) -> bool:
    return trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def any_rank(flag: torch.Tensor, trainer: L.Trainer) -> torch.Tensor:
    """The 0-dim int `flag`'s maximum over the ranks, on the flag's device, not read: the all-reduce is queued."""
    flag = flag.to(torch.int32, copy=True)  # the caller's tensor stays as it was; NCCL and gloo reduce ints
    if distributed(trainer):
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag


class GracefulStop(L.Callback):
    """SIGINT (Ctrl+C) or SIGTERM during `fit`: finish the running step, save `last.ckpt`, exit non-zero.

    The signal handler only sets a flag; the run stops at a batch boundary, after the optimizer step, so the
    checkpoint is a consistent state that `fit --ckpt_path last` continues from exactly. A second Ctrl+C aborts at
    once without saving.
    - One process: at the end of the step during which the signal came. Lightning's own SIGTERM handler is called
      too (it stops a running validation).
    - DDP: the ranks decide together, from an all-reduce of their flags read one step late, so one step later. A
      rank deciding alone would leave the others waiting in their next collective. Lightning's handler is not
      called here: it broadcasts from inside the handler and sets the flag that Lightning's loops check on each rank
      alone; only its forwarding of the signal to the workers it launched is kept. Nor is Lightning's per-step
      broadcast of rank 0's flag run: its `.item()` made each step start with a wait for the GPU. During a
      validation the ranks decide after each batch, and Lightning stops them there, as it does one process.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.saved: Path | None = None
        self._distributed = False
        self._decided = False  # under DDP, during a validation: every rank stops, signalled or not
        self._decisions = Deferred()  # under DDP: per step, whether any rank has received a signal

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._distributed = distributed(trainer)
        if self._distributed:
            patches.skip_sigterm_broadcast(trainer)  # undone when the fit ends

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning registered its SIGTERM handler (which it restores, with SIGINT's, at teardown).
        self.received, self.saved, self._decided, self._decisions = None, None, False, Deferred()
        if self._distributed and patches.received_sigterm(trainer):
            # Lightning's handler took a SIGTERM before training started, and set the flag that its loop checks on
            # this rank alone: it goes through the ranks' decision like any later signal.
            self.received = signal.SIGTERM
            patches.set_received_sigterm(trainer, False)
        if threading.current_thread() is not threading.main_thread():
            return
        lightning_sigterm = signal.getsignal(signal.SIGTERM)
        launcher = getattr(trainer.strategy, "launcher", None) if trainer is not None else None

        def handler(signum: int, frame: Any) -> None:
            if self.received is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl+C: stop now
            first = self.received is None
            self.received = signum
            when = "after the next training step" if self._distributed else "after this training step"
            rank_zero_info(
                f"{signal.Signals(signum).name} received: stopping {when} and saving last.ckpt"
                " (Ctrl+C again aborts at once, without saving)."
            )
            # Once per process: a DDP worker gets both the terminal's SIGINT and rank 0's forwarded SIGTERM.
            if not first:
                return
            if self._distributed:
                if launcher is not None:
                    launcher.kill(signal.SIGTERM)  # the workers Lightning started, if this process started them
            elif callable(lightning_sigterm):
                lightning_sigterm(signal.SIGTERM, frame)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        if not self._distributed:
            if self.received is not None:
                self._stop(trainer)
            return
        self._decisions.push(self._any_rank_received(trainer, pl_module))
        if any(bool(value) for _, value in self._decisions.earlier()):
            self._stop(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        if not self._distributed or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if bool(self._any_rank_received(trainer, pl_module)):  # a wait, but generation waits for the GPU anyway
            # Lightning's own stop, as on one process, now on every rank at once: it raises SIGTERMException after
            # this batch (after the validation, if this was its last), at a point a resume continues from.
            self._decided = True
            patches.set_received_sigterm(trainer, True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        patches.restore_sigterm_broadcast(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        patches.restore_sigterm_broadcast(trainer)
        # Lightning itself stops a running validation (SIGTERMException) between two batches: on one process on the
        # signal, under DDP on the ranks' decision above. Save the state there too. Not on a second Ctrl+C
        # (KeyboardInterrupt), which may come in the middle of a step.
        stopping = self.received is not None or self._decided
        if isinstance(exception, SIGTERMException) and stopping and trainer.global_step > 0:
            self.saved = save_last_checkpoint(trainer)

    def _any_rank_received(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """Whether any rank has received a signal, queued on the device, not read. `torch.full` writes the flag on the
        device without a host-to-GPU copy."""
        return any_rank(torch.full((), int(self.received is not None), device=pl_module.device), trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        # A NaN the guard has not read yet (its update was skipped) is the news, not the signal.
        for callback in trainer.callbacks:
            if isinstance(callback, NonFiniteLossGuard):
                callback.check_pending(trainer, trainer.lightning_module)
        self.saved = save_last_checkpoint(trainer)
        raise TrainingInterrupted(self.message(trainer))

    def message(self, trainer: L.Trainer) -> str:
        name = signal.Signals(self.received).name if self.received is not None else "a stop signal"
        where = f"saved to {self.saved}" if self.saved else "nothing saved (fast_dev_run or no checkpoint callback)"
        return (
            f"error: training interrupted by {name} at global step {trainer.global_step}; resumable state {where}."
            f" To continue: {RESUME_HINT}."
        )


class NonFiniteLossGuard(L.Callback):
    """Stop at the first NaN/inf training loss, with `last.ckpt` holding the weights from before that step.

    With an optimizer that can skip its update on the device (torch's fused Adam, AdamW and SGD take a `found_inf`
    flag, as GradScaler does; titlegen's AdamW is fused), nothing waits: the bad step's update is skipped on the
    device, the flag is read one step later, and the run stops before the next step's update. `last.ckpt` then
    holds the weights from before the bad step, at the next step's position (the bad batch counts as trained; its
    update does not). With another optimizer the flag is read before each update, which waits for the GPU, and the
    run stops there, `last.ckpt` at the bad step's position.
    """

    def __init__(self) -> None:
        self._finite: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None
        self._pending = Deferred()  # per step: [1.0 if any rank's loss was not finite, this rank's loss]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finite, self._loss, self._pending = None, None, Deferred()

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # No host sync here; with gradient accumulation, a bad loss in any micro-batch of the step counts.
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite
        # The loss to report: the first non-finite one of the step (tensor ops, still no sync).
        loss = loss.detach().float().mean()
        self._loss = loss if self._loss is None else torch.where(torch.isfinite(self._loss), loss, self._loss)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        finite, loss = self._finite, self._loss
        self._finite, self._loss = None, None
        if finite is None:
            return
        bad = any_rank(~finite, trainer).float()  # every rank decides the same
        where = (trainer.global_step, trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx)
        if not patches.skips_on_device(optimizer):
            if bool(bad):  # waits for the GPU: this optimizer cannot skip the update by itself
                self._stop(trainer, pl_module, where, float(loss), late=False)
            return
        patches.skip_update_where(optimizer, bad)
        self._pending.push(torch.stack([bad, loss]), where)
        self._stop_at_first_bad(trainer, pl_module, self._pending.earlier())

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.check_pending(trainer, pl_module)  # before a validation on weights whose last update was skipped

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_pending(trainer, pl_module)
        for optimizer in trainer.optimizers:
            patches.clear_skip_flag(optimizer)

    def check_pending(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Read every flag not read yet, the newest included; stop if one was bad. Every rank must call it."""
        self._stop_at_first_bad(trainer, pl_module, self._pending.drain())

    def _stop_at_first_bad(
        self, trainer: L.Trainer, pl_module: L.LightningModule, read: list[tuple[Any, torch.Tensor]]
    ) -> None:
        for where, (was_bad, local) in read:
            if was_bad:
                self._stop(trainer, pl_module, where, float(local), late=True)

    def _stop(
        self, trainer: L.Trainer, pl_module: L.LightningModule, where: tuple[int, int, int], local: float, late: bool
    ) -> None:
        step, epoch, batch = where
        saved = save_last_checkpoint(trainer)
        before = "before this step" if step == trainer.global_step else f"from before step {step}"
        kept = f"The weights {before} are saved in {saved}." if saved else "Nothing was saved (fast_dev_run)."
        hp = getattr(pl_module, "hparams", {})
        # Under DDP every rank stops together; the one whose own loss was finite says where the bad one was.
        what = f"train/loss is {local}"
        if math.isfinite(local):
            what = f"train/loss is not finite on another rank (this rank's: {local})"
        skipped = "the optimizer step was not taken"
        resume = "a resume would repeat this step with the checkpoint's schedule"
        if late:
            skipped = f"its update was skipped, and training stopped at global step {trainer.global_step}"
            resume = "a resume would go on after the bad batch with the checkpoint's schedule"
        raise NonFiniteLossError(
            f"{what} at global step {step} (epoch {epoch}, batch {batch}); {skipped}. {kept} Likely fixes: a lower"
            f" --model.learning_rate (now {hp.get('learning_rate')}) or more --model.warmup_steps (fp16, on a GPU"
            " without bf16 such as a T4, overflows sooner); else a broken sample in this batch. Then run `fit`"
            f" again: {resume}."
        )
