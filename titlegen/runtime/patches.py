"""Every use of Lightning's and bert-score's internals, each in one named function.

Each function names the upstream version it was written against; `tests/runtime/test_patches.py` checks that what
it relies on is still there and fails with a message naming the function when an upgrade changed it. Unsloth's,
transformers' and torch's internals used by the speed work are in `titlegen.perf.patches`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


def skip_sigterm_broadcast(trainer: L.Trainer) -> bool:
    """Lightning 2.6.6: stop the training loop's per-step broadcast of rank 0's SIGTERM flag, for this fit only.

    `_TrainingEpochLoop._broadcast_sigterm_tensor` runs after every step under DDP and reads the broadcast flag on
    the host, which makes each step start with a wait for the GPU. An instance attribute shadows the method until
    `restore_sigterm_broadcast`. Returns whether the loop had the method.
    """
    loop = trainer.fit_loop.epoch_loop
    if not hasattr(loop, "_broadcast_sigterm_tensor"):
        return False
    loop._broadcast_sigterm_tensor = lambda: None
    return True


def restore_sigterm_broadcast(trainer: L.Trainer) -> None:
    """Lightning 2.6.6: remove `skip_sigterm_broadcast`'s stand-in, where it installed one."""
    trainer.fit_loop.epoch_loop.__dict__.pop("_broadcast_sigterm_tensor", None)


def received_sigterm(trainer: L.Trainer) -> bool:
    """Lightning 2.6.6: whether Lightning's own SIGTERM handler has set the flag its loops check."""
    return bool(getattr(trainer, "received_sigterm", False))


def set_received_sigterm(trainer: L.Trainer, value: bool) -> None:
    """Lightning 2.6.6: set the flag Lightning's loops check after each batch (`trainer._signal_connector`); True
    makes them raise `SIGTERMException` there, as on a SIGTERM."""
    trainer._signal_connector.received_sigterm = value


def skips_on_device(optimizer: Any) -> bool:
    """torch 2.14: whether `optimizer.step()` skips its update by itself where `optimizer.found_inf` is 1: torch's
    fused Adam, AdamW and SGD, the protocol GradScaler uses (`_step_supports_amp_scaling`). Checked per param group:
    a group restored from a checkpoint saved without `fused` steps unfused, and the unfused step refuses
    `found_inf`."""
    groups = getattr(optimizer, "param_groups", [])
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False) and groups) and all(
        g.get("fused") for g in groups
    )


def skip_update_where(optimizer: Any, flag: torch.Tensor) -> None:
    """torch 2.14: the next fused `step()` leaves weights, moments and step counts as they are if `flag` is 1."""
    optimizer.found_inf = flag


def add_skip_flag(optimizer: Any, flag: torch.Tensor) -> None:
    """torch 2.14: also skip the next fused `step()` where `flag` (float, 0-dim, on the device) is 1, besides a flag
    that `skip_update_where` set before it."""
    earlier = optimizer.__dict__.get("found_inf")
    optimizer.found_inf = flag if earlier is None else torch.maximum(earlier, flag)


def clear_skip_flag(optimizer: Any) -> None:
    """Remove `skip_update_where`'s flag."""
    optimizer.__dict__.pop("found_inf", None)


def cap_bertscore_length(scorer: Any, limit: int = 512) -> None:
    """bert-score 0.3.13: truncate at `limit` tokens where the encoder's tokenizer reports no real maximum.

    bert-score truncates to `model_max_length`; a local encoder saved without one reports about 1e30, which the
    tokenizer cannot take. 512 is the BERT-family position limit.
    """
    tokenizer = scorer._tokenizer
    if tokenizer.model_max_length > 100_000:
        tokenizer.model_max_length = limit
