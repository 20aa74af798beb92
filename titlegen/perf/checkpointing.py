"""A lean gradient checkpoint for decoder layers: recompute in backward, park the layer input in pinned host memory.

Unsloth's own checkpoint function does the same job (offload each layer's input, recompute the layer in backward),
but through about a hundred lines of Python per call: buffer leases, double-buffer bookkeeping, prefetch records, RNG
capture. On a 0.5B model at batch 32 a training step is bound by the host, not the GPU, and that bookkeeping, paid
twice per layer per step, is a measurable share of it. This one does only what the step needs:
- forward: run the layer without autograd; copy its input to pinned host memory on a side stream (when asked);
- backward: bring the input back, rerun the layer under autograd with the same autocast (and RNG, when asked)
  state, and backpropagate the incoming gradient through it.

The installer is `use_lean_checkpointing`; the equality of its gradients with an uncheckpointed layer's is
tested in `tests/perf/test_checkpointing.py`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from titlegen.perf import patches

_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


class PinnedArena:
    """One block of pinned host memory, handed out in slices from its start for each step.

    A CUDA graph (`stepgraph.StepGraphs`) bakes in the host addresses its layers copy to, and pinned memory cannot
    be allocated during a capture; so a captured step takes its host buffers from an arena that the graph keeps.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.memory = torch.empty(capacity, dtype=torch.uint8, pin_memory=True)
        self.offset = 0

    def take(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        size = math.prod(shape) * dtype.itemsize
        start = -(-self.offset // 256) * 256
        if start + size > self.capacity:
            raise RuntimeError(f"pinned arena of {self.capacity} bytes is full: {start + size} needed")
        self.offset = start + size
        return self.memory[start : start + size].view(dtype).view(shape)


_ARENA: PinnedArena | None = None


@contextlib.contextmanager
def pinned_arena(arena: PinnedArena) -> Iterator[None]:
    """Offloaded layer inputs go to `arena`, from its start, inside the block."""
    global _ARENA
    previous, _ARENA, arena.offset = _ARENA, arena, 0
    try:
        yield
    finally:
        _ARENA = previous


def draws_random_numbers(config: Any, modules: Iterable[torch.nn.Module]) -> bool:
    """Whether running `modules` (of a model with this config) draws random numbers: attention dropout, or a dropout
    module (LoRA's, say) with p > 0. A recompute then needs the forward's RNG state, and a graph replay would repeat
    the captured numbers."""
    return getattr(config, "attention_dropout", 0.0) > 0 or any(
        isinstance(module, torch.nn.Dropout) and module.p > 0 for root in modules for module in root.modules()
    )


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


class _Checkpoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: Callable[[torch.Tensor], Any], offload: bool, preserve_rng: bool, hidden: Any) -> Any:
        ctx.run = run
        ctx.device_type = hidden.device.type
        ctx.autocast = (
            torch.is_autocast_enabled(ctx.device_type),
            torch.get_autocast_dtype(ctx.device_type),
        )
        ctx.rng = None
        if preserve_rng:
            ctx.rng = torch.cuda.get_rng_state(hidden.device) if hidden.is_cuda else torch.get_rng_state()
        ctx.host = None
        if offload and hidden.is_cuda:
            if _ARENA is not None:
                ctx.host = _ARENA.take(hidden.shape, hidden.dtype)
            else:
                # Pinned memory comes from torch's caching host allocator: after the first step it allocates nothing.
                ctx.host = torch.empty(hidden.shape, dtype=hidden.dtype, device="cpu", pin_memory=True)
            side = _side_stream(hidden.device)
            side.wait_stream(torch.cuda.current_stream(hidden.device))
            with torch.cuda.stream(side):
                ctx.host.copy_(hidden, non_blocking=True)
            if not torch.cuda.is_current_stream_capturing():
                # The allocator must not hand out `hidden` before the copy has read it. In a capture, the wait on
                # `copied` below already orders every later use of its memory after the copy.
                hidden.record_stream(side)
            copied = torch.cuda.Event()
            copied.record(side)
            ctx.device = hidden.device
        else:
            ctx.save_for_backward(hidden)
        with torch.no_grad():
            outputs = run(hidden)
        if ctx.host is not None:
            # The copy overlaps this layer's forward; nothing after the layer may run (and possibly write to
            # `hidden`) before it has finished, and that includes the backward's copy back. The same ordering as
            # Unsloth's; it costs the GPU no time unless the copy is slower than the layer.
            torch.cuda.current_stream(hidden.device).wait_event(copied)
        return outputs

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> Any:
        if ctx.run is None or not patches.checkpoint_is_valid():
            raise RuntimeError(
                "A LeanCheckpoint layer was backpropagated twice, or through torch.autograd.grad: like torch's "
                "reentrant checkpoint, it supports one .backward() per forward. Fix: call loss.backward() once, or "
                "train with --model.gradient_checkpointing true (torch's non-reentrant checkpoint)."
            )
        if ctx.host is not None:
            hidden = ctx.host.to(ctx.device, non_blocking=True)
        else:
            (hidden,) = ctx.saved_tensors
        hidden = hidden.detach().requires_grad_(True)
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):
            if ctx.rng is None:
                outputs = ctx.run(hidden)
            else:
                devices = [hidden.device] if hidden.is_cuda else []
                with torch.random.fork_rng(devices=devices, device_type=ctx.device_type):
                    if hidden.is_cuda:
                        torch.cuda.set_rng_state(ctx.rng, hidden.device)
                    else:
                        torch.set_rng_state(ctx.rng)
                    outputs = ctx.run(hidden)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [
            (out, grad)
            for out, grad in zip(outputs, grad_outputs, strict=False)
            if torch.is_tensor(out) and out.requires_grad and grad is not None
        ]
        torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
        ctx.run = ctx.host = None  # free the layer's closure (masks, rotary tables) and the host copy early
        return None, None, None, hidden.grad


class LeanCheckpoint:
    """A `_gradient_checkpointing_func` for one decoder layer (transformers' `GradientCheckpointingLayer` calls it).

    `offload`: keep the layer input in pinned host memory between forward and backward (GPU only), as Unsloth's
    "unsloth" mode does, so checkpointing costs no GPU memory per layer. Off for the last checkpointed layer, whose
    input is needed again at once. `preserve_rng`: replay the forward's RNG state in the recompute; needed only when
    something in the layer draws random numbers (LoRA or attention dropout > 0).

    Like torch's reentrant checkpoint (and Unsloth's), it works with DDP's default `find_unused_parameters=False`,
    not with True, and with one `.backward()` per forward.
    """

    def __init__(self, offload: bool, preserve_rng: bool) -> None:
        self.offload = offload
        self.preserve_rng = preserve_rng

    def __call__(self, run: Callable[..., Any], hidden: torch.Tensor, *args: Any) -> Any:
        if args:  # a positional mask or position tensor: not this layer's calling convention, so not ours to replay
            raise TypeError(f"LeanCheckpoint takes the hidden states only, got {len(args)} more positional arguments")
        if not torch.is_grad_enabled() or not hidden.requires_grad:
            # Without an input that requires grad, autograd would never call the checkpoint's backward and the
            # layer's LoRA weights would get no gradient: run it plainly (more memory, right gradients).
            return run(hidden)
        return _Checkpoint.apply(run, self.offload, self.preserve_rng, hidden)


def use_lean_checkpointing(causal_lm: torch.nn.Module, offload: bool = True) -> None:
    """Swap Unsloth's offloaded checkpoint for `LeanCheckpoint`, which does the same with less Python.

    Called for `gradient_checkpointing` `offload` and `gpu` (`offload=False`: every layer keeps its input on the
    GPU), and only layers that checkpoint are touched. The last checkpointed layer keeps its input on the GPU:
    backward needs it again at once. RNG state is replayed only when a LoRA or attention dropout draws random
    numbers.
    """
    layers = [layer for layer in causal_lm.model.layers if getattr(layer, "gradient_checkpointing", False)]
    dropout = draws_random_numbers(causal_lm.config, layers)
    for index, layer in enumerate(layers):
        patches.set_checkpoint_function(
            layer, LeanCheckpoint(offload=offload and index < len(layers) - 1, preserve_rng=dropout)
        )
