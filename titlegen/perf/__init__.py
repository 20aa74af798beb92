"""The speed of a training step, behind one door: everything outside `titlegen.perf` imports from here.

- `loss`: the title-only loss through the LM head in chunks (`causal_lm_loss`);
- `stepgraph`: the whole training step replayed as a CUDA graph per batch shape;
- `autograph`: with `cuda_graphs auto`, those graphs only where the first steps measure the step host-bound;
- `prefix`: frozen layers below the first adapter run without autograd;
- `checkpointing`: a lean gradient checkpoint with the layer inputs parked in pinned host memory;
- `gradsync`: under DDP, the LoRA gradients averaged in one all-reduce a step;
- `readback`: GPU values read on the host without making it wait;
- `patches`: every use of Unsloth's, transformers' and torch's internals, each in one named function.

Each piece computes what the plain code computes (tests/perf/), and each can be turned off by an option
(docs/performance.md).
"""

from __future__ import annotations

from typing import Any

from titlegen.perf.autograph import AutoGraphs
from titlegen.perf.checkpointing import use_lean_checkpointing
from titlegen.perf.gradsync import FlatGradientSync
from titlegen.perf.gradsync import take_over as take_over_gradient_sync
from titlegen.perf.loss import causal_lm_loss, hidden_states, unwrapped
from titlegen.perf.patches import keep_custom_op_aliasing_a_warning
from titlegen.perf.readback import Deferred, LatestValue

LEAN_CHECKPOINTS = ("offload", "gpu")  # the `gradient_checkpointing` modes that `LeanCheckpoint` runs

__all__ = [
    "LEAN_CHECKPOINTS",
    "AutoGraphs",
    "Deferred",
    "FlatGradientSync",
    "LatestValue",
    "causal_lm_loss",
    "hidden_states",
    "keep_custom_op_aliasing_a_warning",
    "prepare_for_training",
    "prepare_model",
    "take_over_gradient_sync",
    "unwrapped",
]


def prepare_model(model: Any) -> None:
    """Once, after the LoRA adapters are in place: Unsloth's fused LoRA MLP runs outside its compiled blocks."""
    from titlegen.perf.patches import run_lora_mlp_eagerly

    run_lora_mlp_eagerly(model)


def prepare_for_training(model: Any, lean_checkpoint: str | None) -> None:
    """After Unsloth's `for_training` (a fit's start, and after each validation's generation).

    `lean_checkpoint` (`offload` or `gpu`, None for another checkpoint) installs `LeanCheckpoint` in place of
    Unsloth's. (The step graphs check the addresses of what they read themselves.)
    """
    causal_lm = unwrapped(model)
    if lean_checkpoint in LEAN_CHECKPOINTS:
        use_lean_checkpointing(causal_lm, offload=lean_checkpoint == "offload")
