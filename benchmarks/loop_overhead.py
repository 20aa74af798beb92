"""Host time per step of the training loop itself: a raw PyTorch loop against Lightning's, on a trivial model.

    python -m benchmarks.loop_overhead --steps 2000

A 0.5B model's step at batch 32 waits on the host (docs/performance.md), so the loop's own Python counts. The model
here is one small linear layer on the CPU, so each step's time is almost all loop: forward, backward, gradient
clipping at 1.0, AdamW. Printed side by side, in one run: the raw loop; `L.Trainer` as the benchmark's titlegen
variant runs it (no logger, no progress bar); and with titlegen's callbacks, a TensorBoard logger and the progress
bar, as `main.py fit` runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import lightning as L
import torch


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 16)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch).square().mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def raw_loop(batches: list[torch.Tensor]) -> float:
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for batch in batches:
        loss = model(batch).square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


class Clock(L.Callback):
    """From the first batch on, as the raw loop is timed (the DataLoader and setup are outside both)."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if idx == 0:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning_loop(batches: list[torch.Tensor], like_main: bool) -> float:
    from titlegen.runtime.stopping import GracefulStop, NonFiniteLossGuard

    torch.manual_seed(0)
    clock = Clock()
    extra: dict[str, Any] = {"logger": False, "enable_progress_bar": False, "callbacks": [clock]}
    with tempfile.TemporaryDirectory() as root:
        if like_main:
            extra = {
                "logger": L.pytorch.loggers.TensorBoardLogger(root), "log_every_n_steps": 10,
                "callbacks": [clock, GracefulStop(), NonFiniteLossGuard(),
                              L.pytorch.callbacks.LearningRateMonitor()],
            }  # fmt: skip
        trainer = L.Trainer(
            accelerator="cpu", max_epochs=1, enable_checkpointing=False, enable_model_summary=False,
            gradient_clip_val=1.0, default_root_dir=root, **extra,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(batches, batch_size=None)
        trainer.fit(Tiny(), loader)
    return clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = [torch.randn(4, 16) for _ in range(args.steps)]
    raw_loop(batches[:50])  # warm-up
    runs = {
        "raw loop": raw_loop(batches),
        "Lightning, as the benchmark runs it": lightning_loop(batches, like_main=False),
        "Lightning, as main.py fit runs it": lightning_loop(batches, like_main=True),
    }
    base = runs["raw loop"] / args.steps
    print(f"\n| loop ({args.steps} steps, one 16x16 linear layer, CPU) | ms a step | extra host ms a step |")
    print("|---|---|---|")
    for name, seconds in runs.items():
        per_step = seconds / args.steps
        print(f"| {name} | {1000 * per_step:.3f} | {1000 * (per_step - base):.3f} |")


if __name__ == "__main__":
    main()
