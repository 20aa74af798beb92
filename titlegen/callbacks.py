"""What a run does beside the LightningModule: adapter export, sample titles, throughput, predicted titles file."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from titlegen.metrics import gather_from_ranks


def _tensorboard(trainer: L.Trainer) -> Any:
    logger = trainer.logger
    experiment = getattr(logger, "experiment", None) if logger is not None else None
    return experiment if hasattr(experiment, "add_text") else None


def run_dir(trainer: L.Trainer) -> Path:
    """The run's log folder ("." without a logger). Call it on every rank, before any rank-0-only work: under DDP
    `trainer.log_dir` is a broadcast from rank 0, so rank 0 alone asking waits forever for the others."""
    return Path(trainer.log_dir or ".")


class AdapterExport(L.Callback):
    """At the end of `fit`, save the PEFT adapter (adapter_config.json + safetensors) in the run's log folder."""

    def __init__(self, dirname: str = "adapter") -> None:
        """Args:
        dirname: folder name, inside the run's log folder, for the adapter.
        """
        self.dirname = dirname

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or not getattr(pl_module, "trainable_params", 0):
            return
        out_dir = run_dir(trainer)
        if not trainer.is_global_zero:
            return
        from titlegen.modeling import save_adapter

        path = save_adapter(pl_module.model, out_dir / self.dirname)
        rank_zero_info(f"PEFT adapter saved to {path}")


class SampleTitles(L.Callback):
    """Log a table of abstract / reference / generated title to TensorBoard after each validation and test."""

    def __init__(self, num_examples: int = 8, abstract_chars: int = 300) -> None:
        """Args:
        num_examples: rows in the table.
        abstract_chars: abstracts are cut to this many characters in the table.
        """
        self.num_examples = num_examples
        self.abstract_chars = abstract_chars

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        writer = _tensorboard(trainer)
        rows = getattr(pl_module, "generations", [])[: self.num_examples]
        if writer is None or not rows or not trainer.is_global_zero:
            return
        cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines = ["| abstract | reference | generated |", "|---|---|---|"]
        lines += [
            f"| {cell(r['abstract'][: self.abstract_chars])}… | {cell(r['reference'])} | {cell(r['generated'])} |"
            for r in rows
        ]
        writer.add_text(f"{stage}/titles", "\n".join(lines), global_step=trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")


class Throughput(L.Callback):
    """Real (non-padding) training tokens per second and peak GPU memory, logged every `every_n_steps`."""

    def __init__(self, every_n_steps: int = 10) -> None:
        """Args:
        every_n_steps: optimizer steps between two measurements.
        """
        self.every_n_steps = every_n_steps
        self._tokens: torch.Tensor | int = 0  # summed on the batch's device between two measurements
        self._start: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *_: Any) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, _: Any, batch: Any, *__: Any
    ) -> None:
        # A tensor sum, not int(): reading a GPU value on the host every step would make the host wait for the GPU
        # and stop it from queueing the next step ahead. The one read per measurement below waits once.
        self._tokens = batch["attention_mask"].sum() + self._tokens
        if trainer.global_step % self.every_n_steps or self._start is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            pl_module.log("perf/peak_memory_gib", peak)
        elapsed = time.perf_counter() - self._start
        pl_module.log("perf/tokens_per_sec", int(self._tokens) * trainer.world_size / max(elapsed, 1e-9))
        self._tokens, self._start = 0, time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation time is not training time: restart the window after it.
        self._tokens, self._start = 0, None


class TitleWriter(BasePredictionWriter):
    """Write the titles that `predict` generates to a JSONL file, one line per input abstract, in input order."""

    def __init__(self, output: str | None = None) -> None:
        """Args:
        output: JSONL file for the titles (id, abstract, title, stopped, new_tokens, and reference when the input
            has a title); default `titles.jsonl` in the run's log folder, beside the config.yaml that records the
            checkpoint and options.
        """
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        # Every process calls this once, so the gather is safe; predict's sampler gives each rank distinct samples.
        rows = gather_from_ranks([row for batch in predictions for row in batch])
        out_dir = run_dir(trainer)
        if not trainer.is_global_zero:
            return
        ordered = [row for _, row in sorted({row["index"]: row for row in rows}.items())]
        path = Path(self.output) if self.output else out_dir / "titles.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "w", encoding="utf-8") as handle:
            for row in ordered:
                handle.write(json.dumps({k: v for k, v in row.items() if k != "index"}, ensure_ascii=False) + "\n")
        partial.replace(path)  # never a half-written file under the final name
        stopped = sum(row["stopped"] for row in ordered)
        rank_zero_info(f"{len(ordered)} titles written to {path} ({stopped} ended on the end-of-turn token).")


# ----------------------------------------------------------------------------------------------- reliability
RESUME_HINT = "run the same `fit` command again with `--ckpt_path last`"


class TrainingInterrupted(SystemExit):
    """`fit` stopped on SIGINT/SIGTERM after saving a resumable checkpoint; the message says how to resume."""


class NonFiniteLossError(RuntimeError):
    """The training loss is NaN or infinite; raised before the optimizer step, so the saved weights are still good."""


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


def any_rank(flag: torch.Tensor, trainer: L.Trainer) -> bool:
    """Whether the 0-dim `flag` is true on any rank, taken together by all ranks: one all-reduce on the flag's own
    device, then one read of the result: one wait for the GPU. Lightning's `reduce_boolean_decision` takes a Python
    bool (so a GPU flag is read first), copies a host-built tensor over, reduces it after a barrier and reads the
    result: up to four waits, and under NCCL the barrier is itself a collective that the host waits for."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = flag.to(torch.int32, copy=True)  # the caller's tensor stays as it was; NCCL and gloo reduce ints
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag)


class GracefulStop(L.Callback):
    """SIGINT (Ctrl+C) or SIGTERM during `fit`: finish the running step, save `last.ckpt`, exit non-zero.

    The signal handler only sets a flag; the run stops at the next batch boundary, after the optimizer step, so
    the checkpoint is a consistent state that `fit --ckpt_path last` continues from exactly. Lightning's own
    SIGTERM handler is kept and called (it stops a running validation and passes the signal to DDP workers); a
    second Ctrl+C aborts at once without saving.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.saved: Path | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning registered its SIGTERM handler (which it restores, with SIGINT's, at teardown).
        self.received, self.saved = None, None
        if threading.current_thread() is not threading.main_thread():
            return
        lightning_sigterm = signal.getsignal(signal.SIGTERM)

        def handler(signum: int, frame: Any) -> None:
            if self.received is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl+C: stop now
            first = self.received is None
            self.received = signum
            rank_zero_info(
                f"{signal.Signals(signum).name} received: stopping after this training step and saving last.ckpt"
                " (Ctrl+C again aborts at once, without saving)."
            )
            # Lightning's handler broadcasts to the other ranks: once per process, or a DDP worker that gets both
            # the terminal's SIGINT and rank 0's forwarded SIGTERM would broadcast twice and desynchronise them.
            if first and callable(lightning_sigterm):
                lightning_sigterm(signal.SIGTERM, frame)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        received = self.received is not None
        if trainer.world_size > 1:
            # Every rank takes the decision together: one rank alone leaving would hang the others' next
            # collective. `torch.full` writes the flag on the device without a host-to-GPU copy.
            received = any_rank(torch.full((), int(received), device=pl_module.device), trainer)
        if received:
            self._stop(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning itself stops a running validation on the signal (SIGTERMException), between two batches: save
        # the state there too. Not on a second Ctrl+C (KeyboardInterrupt), which may come in the middle of a step.
        if isinstance(exception, SIGTERMException) and self.received is not None and trainer.global_step > 0:
            self.saved = save_last_checkpoint(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
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
    """Stop at the first NaN/inf training loss, before the optimizer step, so `last.ckpt` holds the last good weights.

    The loss is checked just before the optimizer step rather than before backward: reading it on the host waits for
    the GPU, and there the wait no longer keeps the backward pass from being queued.
    """

    def __init__(self) -> None:
        self._finite: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None

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
        if finite is None or not any_rank(~finite, trainer):
            return
        saved = save_last_checkpoint(trainer)
        where = f"The weights before this step are saved in {saved}." if saved else "Nothing was saved (fast_dev_run)."
        hp = getattr(pl_module, "hparams", {})
        local = loss.float().mean().item()
        # Under DDP every rank stops together; the one whose own loss was finite says where the bad one was.
        what = f"train/loss is {local}"
        if math.isfinite(local):
            what = f"train/loss is not finite on another rank (this rank's: {local})"
        raise NonFiniteLossError(
            f"{what} at global step {trainer.global_step} (epoch"
            f" {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx}); the optimizer step was not"
            f" taken. {where} Likely fixes: a lower --model.learning_rate (now {hp.get('learning_rate')}) or more"
            " --model.warmup_steps (fp16, on a GPU without bf16 such as a T4, overflows sooner); else a broken sample"
            " in this batch. Then run `fit` again: a resume would repeat this step with the checkpoint's schedule."
        )
