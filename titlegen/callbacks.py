"""What a run does beside the LightningModule: adapter export, sample titles, throughput, predicted titles file.

Stopping a fit cleanly (signals, a non-finite loss) is `titlegen.runtime.stopping`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from titlegen.metrics import gather_from_ranks
from titlegen.runtime.runs import run_dir, run_seed


def _tensorboard(trainer: L.Trainer) -> Any:
    logger = trainer.logger
    experiment = getattr(logger, "experiment", None) if logger is not None else None
    return experiment if hasattr(experiment, "add_text") else None


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
        from titlegen.model.merge import save_adapter

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


class HyperparameterMetrics(L.Callback):
    """Fill TensorBoard's HPARAMS tab: the run's hyperparameters with its final validation or test BERTScore F1."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        f1 = trainer.callback_metrics.get(f"{stage}/bertscore_f1")
        if trainer.logger is None or f1 is None or trainer.fast_dev_run:
            return
        params = {**hyperparameters(pl_module.hparams), "seed": run_seed(),
                  "max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps}  # fmt: skip
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and "batch_size" in datamodule.hparams:
            params["batch_size"] = datamodule.hparams.batch_size
        trainer.logger.log_hyperparams(params, metrics={f"hp/{stage}_bertscore_f1": float(f1)})


def hyperparameters(hparams: Any) -> dict[str, Any]:
    """Values TensorBoard's HPARAMS tab shows as they are: numbers, strings and booleans; anything else as text."""
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in dict(hparams).items()}


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
