"""Loss scaling for float16 training (`model.compute_dtype float16`), from the LightningModule's hooks.

With float16 the 4-bit layers dequantize to float16 and every activation and activation gradient is float16; the LoRA
weights are float32 master weights, and so are their gradients (Unsloth upcasts them: unsloth_zoo's
`prepare_model_for_training`). titlegen runs no autocast: the model is float16 itself, and a step graph cannot be
captured under autocast. The loss and its log-softmax are float32 (`perf.loss`). What float16 loses is the
backward's small activation gradients: the title loss's gradient is 1/positions (about 1/600 at batch 32) times the
softmax, and below 6e-8 float16 flushes a gradient to 0. So the loss is scaled before backward, as Unsloth's trainer
(transformers' Trainer with fp16) and Lightning's `16-mixed` do with torch's GradScaler: the float32 LoRA gradients
are divided back before clipping, a step whose scaled gradients overflowed is skipped and the scale halved, and the
scale doubles after 2,000 steps without overflow.

A forward that overflows float16 makes the loss itself inf or NaN: no scale helps there, and
`stopping.NonFiniteLossGuard` stops the run as for any non-finite loss (it sees the loss before it is scaled).

Nothing waits for the GPU: the overflow check is a device tensor, and the fused AdamW skips its update by itself
where it is 1 (the guard's mechanism, `patches.skip_update_where`). Lightning's own `16-mixed` precision brings its
own GradScaler (and autocast, without step graphs); the module does not add this one then.
"""

from __future__ import annotations

from typing import Any

import torch

from titlegen.runtime import patches


class LossScale:
    """torch's GradScaler, driven from the hooks: `scale` the loss in backward, `unscale` before the optimizer step
    (before Lightning's gradient clipping), `update` after it. Its state goes into checkpoints (`state_dict`)."""

    def __init__(self, device_type: str = "cuda") -> None:
        self.scaler = torch.amp.GradScaler(device_type)
        self._unscaled = False  # whether this step's gradients went through `unscale`

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def seed(self, device: torch.device) -> torch.Tensor:
        """The scale as a 0-dim float32 tensor on `device`, read without waiting: where a step graph's backward
        starts (`perf.causal_lm_loss`'s `grad_seed`), as the eager backward of the scaled loss does."""
        return self.scaler.scale(torch.ones((), dtype=torch.float32, device=device))

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale; make the coming step skip its update where one is not finite."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # GradScaler.update() needs the inf check that unscale_ records, and it records none without gradients.
        self._unscaled = bool(grads)
        if not grads:
            return
        self.scaler.unscale_(optimizer)
        overflowed = (~torch.stack(torch._foreach_norm(grads)).isfinite().all()).float()
        if patches.skips_on_device(optimizer):
            patches.add_skip_flag(optimizer, overflowed)
        elif bool(overflowed):  # waits for the GPU: an unfused optimizer cannot skip by itself
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # AdamW leaves a parameter without a gradient as it is, moments and step count too

    def update(self, optimizer: torch.optim.Optimizer) -> None:
        """After the optimizer step: halve the scale after an overflow, double it after a run without one."""
        if self._unscaled:
            self.scaler.update()
        self._unscaled = False
        patches.clear_skip_flag(optimizer)  # set afresh before each step, by the guard and by `unscale`

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)
