"""Every use of another library's internals that titlegen's speed work relies on, each in one named function.

Each function names the upstream version it was written against. `tests/perf/test_patches.py` checks, for each,
that the attribute, function or signature it relies on is still there, and fails with a message naming this
function when an upgrade removed or changed it: an upgrade then breaks a test, not a user's run.
Lightning's and bert-score's internals are in `titlegen.runtime.patches`.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch


def keep_custom_op_aliasing_a_warning() -> None:
    """torch 2.14: make the custom-op aliasing check a warning everywhere, not an error under `$CI` only.

    torch checks, on the first call of each compiled graph, that custom ops do not alias their inputs, and raises
    only when `$CI` is set. It flags inductor's own `alloc_from_pool` (a view of its memory pool by design) in the
    attention-mask builder that Unsloth compiles, so the same run would fail under CI and merely warn elsewhere.
    """
    import torch._functorch.config as functorch_config

    functorch_config.error_on_custom_op_aliasing = False


def needs_models_own_loss(config: Any) -> bool:
    """Unsloth 2026.10.9: whether the model transforms its logits (softcapping or scaling: Gemma 2, Cohere, Granite),
    read from Unsloth's own table (`unsloth.models.llama.resolve_logit_transforms`, not exported)."""
    from unsloth.models.llama import resolve_logit_transforms

    return any(resolve_logit_transforms(config))


def mark_labelled_batch(backbone: torch.nn.Module) -> None:
    """Unsloth 2026.10.9: tell Unsloth's decoder forward that the batch has labels (right-padded training).

    The CausalLM's forward sets `_has_no_labels` on its backbone before calling it; titlegen calls the backbone
    itself (the loss runs the LM head on the title positions only), so it sets the flag as that forward would.
    """
    backbone._has_no_labels = False


def run_lora_mlp_eagerly(model: torch.nn.Module) -> int:
    """Unsloth 2026.10.9 on torch >= 2.11: take Unsloth's fused LoRA MLP out of its compiled decoder blocks, so that
    its backward works in place. Returns the number of MLPs changed (none on the CPU, where nothing is fused).

    Unsloth compiles each decoder layer as one torch.compile region and traces its fused LoRA MLP
    (`fast_lora.apply_lora_mlp_swiglu`, installed as each MLP's instance `forward`) into it. Traced, the SwiGLU
    backward's in-place Triton kernel is functionalized: it writes three new [batch, seq, intermediate] tensors next
    to the two the forward saved and the gradient of h, and those six are the peak of a training step. Run eagerly,
    the kernel overwrites the forward's tensors instead. The MLP's input is not overwritten (`inplace=False`): the
    compiled part of the block may have saved it for its own backward.
    """
    from unsloth.kernels import fast_lora

    changed = 0
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if getattr(forward, "__func__", None) is not fast_lora.apply_lora_mlp_swiglu:
            continue
        eager = torch._dynamo.disable(functools.partial(fast_lora.apply_lora_mlp_swiglu, inplace=False))
        # Unsloth's later checks (`_fused_lora_modules`, its FSDP decline) find fused MLPs by `forward.__func__.func`.
        eager.func = fast_lora.apply_lora_mlp_swiglu
        module.forward = types.MethodType(eager, module)
        changed += 1
    return changed


def set_checkpoint_function(layer: torch.nn.Module, function: Any) -> None:
    """transformers 5.17: the function a `GradientCheckpointingLayer` calls to checkpoint itself.

    `gradient_checkpointing_enable` sets `_gradient_checkpointing_func` on each layer (Unsloth sets its own offloaded
    one); the layer's `__call__` calls it with the layer's forward and the hidden states.
    """
    layer._gradient_checkpointing_func = function


def checkpoint_function(layer: torch.nn.Module) -> Any:
    """transformers 5.17: the checkpoint function `set_checkpoint_function` sets, or None."""
    return getattr(layer, "_gradient_checkpointing_func", None)


def checkpoint_is_valid() -> bool:
    """torch 2.14: False inside `torch.autograd.grad` (and a second backward), where a reentrant checkpoint cannot
    run; torch's own reentrant checkpoint asks the same (`torch.autograd._is_checkpoint_valid`)."""
    return torch.autograd._is_checkpoint_valid()


def compiled_graph_count() -> int:
    """torch 2.14: how many graphs torch.compile has compiled in this process (`torch._dynamo.utils.counters`)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def end_allocate_to_pool(device: int, pool: Any) -> None:
    """torch 2.14: route the caching allocator's allocations back from a graph pool after a failed capture_end.

    Older torch raised in `capture_end` before doing this itself; without it the allocator would think a capture
    is still running (`torch._C._cuda_endAllocateToPool`).
    """
    torch._C._cuda_endAllocateToPool(device, pool)


def module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """torch 2.14: a module's own parameters and buffers, read from `_parameters` and `_buffers` directly.

    `named_parameters(recurse=False)` builds generators and `getattr` on a module raises (and formats) an
    AttributeError for every attribute it lacks; read once per training step over every module, that cost tens of
    milliseconds of host time a step.
    """
    return [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]


_ROTARY_TABLES = ("multi_gpu_cos_cached", "multi_gpu_sin_cached", "cos_cached", "sin_cached")


def rotary_tables(module: torch.nn.Module) -> list[torch.Tensor]:
    """Unsloth 2026.10.9: the cos/sin tables of Unsloth's rotary embeddings (plain attributes, not buffers, rebuilt
    lazily when a longer sequence comes): a CUDA graph that reads them must be dropped when they move."""
    found: list[torch.Tensor] = []
    attributes = module.__dict__
    for name in _ROTARY_TABLES:
        value = attributes.get(name)
        if value is not None:
            values = value if isinstance(value, list | tuple) else [value]
            found += [v for v in values if isinstance(v, torch.Tensor)]
    return found


def ddp_has_comm_hook(ddp: torch.nn.parallel.DistributedDataParallel) -> bool:
    """torch 2.14: whether a communication hook (compression, local SGD) is registered on `ddp` (`_comm_hooks`)."""
    return bool(ddp._comm_hooks)
