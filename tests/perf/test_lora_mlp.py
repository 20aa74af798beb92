"""Unsloth's fused LoRA MLP runs outside its compiled decoder blocks, so that its SwiGLU backward works in place.

Unsloth fuses the MLP only on a GPU (Triton kernels): the CPU test installs the fused forward by hand, as Unsloth's
`patch_peft_model` does, and checks the wiring; the GPU test (on the device:
`python -m pytest tests/perf/test_lora_mlp.py`) checks the numbers and the memory.
"""

from __future__ import annotations

import types

import pytest
import torch

from tests.helpers import assert_same, loss_and_grads, padded_batch, trained_looking_lora
from titlegen import perf
from titlegen.model import lora
from titlegen.perf import patches


def fuse_mlps_as_unsloth_does(model) -> list[torch.nn.Module]:
    from unsloth.kernels import fast_lora

    mlps = [layer.mlp for layer in perf.unwrapped(model).model.layers]
    for mlp in mlps:
        mlp.forward = types.MethodType(fast_lora.apply_lora_mlp_swiglu, mlp)
    return mlps


def test_the_fused_mlp_leaves_the_compiled_block_keeps_its_input_intact_and_unsloth_still_sees_it(tiny_model_dir):
    from unsloth.kernels import fast_lora
    from unsloth.models.llama import _fused_lora_modules

    model = trained_looking_lora(tiny_model_dir, "all")
    mlps = fuse_mlps_as_unsloth_does(model)
    assert patches.run_lora_mlp_eagerly(model) == len(mlps) == 2
    for mlp in mlps:
        function = mlp.forward.__func__
        assert function._torchdynamo_disable, "traced into the block, the SwiGLU backward is not in place"
        inner = function._torchdynamo_orig_callable
        assert (inner.func, inner.keywords) == (fast_lora.apply_lora_mlp_swiglu, {"inplace": False})
    # Unsloth's later checks (the FSDP decline) find the fused MLPs through `forward.__func__.func`.
    assert {id(m) for m in mlps} <= {id(m) for m in _fused_lora_modules(model)}
    assert patches.run_lora_mlp_eagerly(model) == 0, "a second call must not wrap the wrapper"


def step_peak(model, batch) -> tuple[tuple[float, dict[str, torch.Tensor]], int]:
    """The loss and LoRA gradients of one step, and the bytes it allocated at its peak above what it started with."""
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = loss_and_grads(model, perf.causal_lm_loss(model, **batch))
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - start


@pytest.mark.gpu
def test_the_eager_mlp_gives_the_compiled_blocks_loss_and_gradients_with_three_fewer_mlp_sized_tensors(tiny_models):
    # A wide MLP, so its [batch, seq, 8192] tensors dominate the step's memory as Qwen2.5's 4864 do at 896.
    model_dir = tiny_models(arch="qwen2", layers=2, intermediate_size=8192)
    compiled = trained_looking_lora(model_dir, "all", "offload")
    eager = trained_looking_lora(model_dir, "all", "offload")
    fuse_mlps_as_unsloth_does(compiled)  # undo run_lora_mlp_eagerly: Unsloth's own fused forward, traced
    for model in (compiled, eager):
        lora.training_mode(model)
    batch = padded_batch(model_dir, 7, "cuda")
    tokens = batch["input_ids"].numel()
    mlp_tensor = tokens * 8192 * perf.unwrapped(compiled).model.embed_tokens.weight.element_size()

    for _ in range(2):  # compile and warm up both
        step_peak(compiled, batch), step_peak(eager, batch)
    reference, compiled_peak = step_peak(compiled, batch)
    result, eager_peak = step_peak(eager, batch)

    assert_same(reference, result)
    assert compiled_peak - eager_peak >= 2.5 * mlp_tensor, (compiled_peak, eager_peak, mlp_tensor)
