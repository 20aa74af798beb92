"""NonFiniteLossGuard on a toy module: with a fused AdamW the bad update is skipped on the device and the run stops
a step later (also before a validation, and at the end of training); with an optimizer that cannot skip, or one
restored from a checkpoint saved unfused, it reads the flag before each update and stops there. titlegen's own fit
is tested end to end in test_resume.py and, under DDP, in test_ddp_fit.py."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch

from titlegen.runtime.patches import skips_on_device
from titlegen.runtime.stopping import GracefulStop, NonFiniteLossError, NonFiniteLossGuard


class Toy(L.LightningModule):
    def __init__(self, nan_at: int, fused: bool) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.nan_at, self.fused = nan_at, fused
        self.weights: dict[int, torch.Tensor] = {}
        self.validated: list[int] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.weights[self.global_step] = self.layer.weight.detach().clone()
        loss = self.layer(batch).pow(2).mean()
        return loss * float("nan") if self.global_step == self.nan_at else loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.validated.append(self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.1, fused=self.fused)


def fit(module: Toy, steps: int = 5, validate_every: int | None = None, *extra: L.Callback) -> tuple[L.Trainer, str]:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[*extra, NonFiniteLossGuard()], num_sanity_val_steps=0,
        val_check_interval=validate_every, limit_val_batches=1 if validate_every else 0,
    )  # fmt: skip
    data = torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=2)
    with pytest.raises(NonFiniteLossError) as stopped:
        trainer.fit(module, data, data if validate_every else None)
    return trainer, str(stopped.value)


def test_without_a_fused_optimizer_the_guard_stops_before_the_bad_update():
    module = Toy(nan_at=2, fused=False)
    trainer, message = fit(module)
    assert message.startswith(
        "train/loss is nan at global step 2 (epoch 0, batch 2); the optimizer step was not taken."
    )
    assert trainer.global_step == 2
    assert torch.equal(module.layer.weight, module.weights[2])


def test_with_a_fused_optimizer_the_bad_update_is_skipped_and_the_run_stops_a_step_later():
    module = Toy(nan_at=2, fused=True)
    trainer, message = fit(module)
    assert (
        "at global step 2 (epoch 0, batch 2); its update was skipped, and training stopped at global step 3" in message
    )
    assert trainer.global_step == 3
    assert torch.equal(module.layer.weight, module.weights[2]) and torch.equal(module.weights[3], module.weights[2])
    assert not torch.equal(module.weights[2], module.weights[1]), "the steps before moved the weights"


def test_a_bad_last_step_is_caught_at_the_end_of_training():
    module = Toy(nan_at=4, fused=True)
    trainer, message = fit(module, steps=5)
    assert (
        "at global step 4 (epoch 0, batch 4); its update was skipped, and training stopped at global step 5" in message
    )
    assert torch.equal(module.layer.weight, module.weights[4])


def test_a_bad_step_just_before_a_validation_stops_the_run_before_it():
    module = Toy(nan_at=1, fused=True)
    trainer, message = fit(module, validate_every=2)
    assert "at global step 1 (epoch 0, batch 1); its update was skipped, and training stopped at global step 2" in (
        message
    )
    assert module.validated == [], "the validation after step 1 did not run on the stopped run"
    assert torch.equal(module.layer.weight, module.weights[1])


def test_an_optimizer_restored_from_an_unfused_checkpoint_is_not_asked_to_skip():
    params = [torch.nn.Parameter(torch.ones(3))]
    fused = torch.optim.AdamW(params, fused=True)
    assert skips_on_device(fused) and not skips_on_device(torch.optim.AdamW(params))
    # A checkpoint written before titlegen's AdamW was fused: its groups say fused=None, and torch keeps that.
    fused.load_state_dict(torch.optim.AdamW(params).state_dict())
    assert not skips_on_device(fused)


def test_a_signal_in_the_bad_step_still_reports_the_bad_loss():
    """GracefulStop stops at the end of the step the signal came in, before the guard has read that step's flag: it
    reads the guard's pending flags first, so the user learns of the NaN, not only of the interruption."""

    class SignalledToy(Toy):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            if self.global_step == self.nan_at:
                os.kill(os.getpid(), signal.SIGINT)
            return super().training_step(batch, batch_idx)

    module = SignalledToy(nan_at=2, fused=True)
    trainer, message = fit(module, 5, None, GracefulStop())
    assert "at global step 2 (epoch 0, batch 2); its update was skipped, and training stopped at global step 3" in (
        message
    )
    assert torch.equal(module.layer.weight, module.weights[2])
