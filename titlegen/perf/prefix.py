"""The frozen decoder layers below the first adapted one, run once without autograd.

With LoRA on the last layer only, PEFT and Unsloth still make the embeddings' output require grad, so by default
autograd records, recomputes and backpropagates through all 23 frozen layers of Qwen2.5-0.5B. `frozen_prefix` runs
them under no_grad instead, and the first adapted layer gets a fresh leaf input: the backward pass starts there.
On a GPU the whole step, this prefix included, is replayed as a CUDA graph (`stepgraph`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def first_trainable_layer(backbone: Any) -> int:
    """Index of the first decoder layer with a trainable weight (0 when the embeddings train; len() when none)."""
    if any(p.requires_grad for p in backbone.embed_tokens.parameters()):
        return 0
    for index, layer in enumerate(backbone.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return index
    return len(backbone.layers)


@contextlib.contextmanager
def frozen_prefix(backbone: Any, first: int) -> Iterator[None]:
    """Run `backbone.layers[:first]` without autograd and hand `layers[first]` an input that starts a fresh autograd
    graph.

    The frozen layers run under no_grad, without checkpointing (they keep no activations). The first adapted layer
    gets a leaf input, which requires grad when its reentrant checkpoint needs one. A no-op when `first` is 0 (the
    embeddings or the first layer train) or past the last layer.
    """
    layers = backbone.layers
    if not 0 < first < len(layers):
        yield
        return
    prefix = layers[:first]
    checkpointing = [getattr(layer, "gradient_checkpointing", False) for layer in prefix]
    grad_was_enabled = torch.is_grad_enabled()

    def enter(module: torch.nn.Module, args: Any) -> None:
        torch.set_grad_enabled(False)

    # Only a reentrant checkpoint needs an input that requires grad; without one, it would cost a needless dX pass.
    needs_grad = bool(getattr(layers[first], "gradient_checkpointing", False))

    def leave(module: torch.nn.Module, args: Any, output: Any) -> Any:
        torch.set_grad_enabled(grad_was_enabled)
        if isinstance(output, tuple):
            return (output[0].detach().requires_grad_(needs_grad), *output[1:])
        return output.detach().requires_grad_(needs_grad)

    for layer in prefix:
        layer.gradient_checkpointing = False  # a checkpoint inside no_grad would only copy activations around
    handles = [prefix[0].register_forward_pre_hook(enter), prefix[-1].register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer, value in zip(prefix, checkpointing, strict=True):
            layer.gradient_checkpointing = value
        torch.set_grad_enabled(grad_was_enabled)
