"""titlegen's lean gradient checkpoint gives the gradients of an uncheckpointed model, on the real Unsloth path.

The `offload` half (pinned host memory, a side stream) needs a GPU: the whole-step graph tests run it there
(tests/perf/test_stepgraph.py). On the CPU the checkpoint keeps the layer input, and everything else (recompute under
autograd, RNG replay, installation) is the same.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.utils.checkpoint

from tests.helpers import synthetic_pairs
from titlegen import perf
from titlegen.data.collate import Collator
from titlegen.data.tokenization import chat_tokens, encode_pairs, load_tokenizer
from titlegen.model import loading, lora
from titlegen.model.lora import DEFAULT_TARGET_MODULES
from titlegen.perf.checkpointing import LeanCheckpoint


def lora_model(model_dir, checkpointing, dropout=0.0):
    base = loading.load_base_model(str(model_dir), 512)
    model = lora.apply_lora(base, "all", 8, 16, dropout, DEFAULT_TARGET_MODULES, checkpointing, 0)
    lora.training_mode(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.2)  # LoRA B starts at 0, which would zero the A gradients
    return model


def layers_of(model):
    return model.get_base_model().model.layers


def grads(model, batch, seed=5):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks of the forward
    perf.causal_lm_loss(model, **batch).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_relative_difference(a, b):
    assert a.keys() == b.keys() and a
    return max(float((a[n] - b[n]).norm() / b[n].norm()) for n in a)


@pytest.fixture
def batch(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples = encode_pairs(synthetic_pairs(4, seed=3), tokenizer, 512)
    return Collator(chat_tokens(tokenizer).pad_id, for_generation=False)(list(enumerate(examples)))


def test_offload_and_gpu_install_the_lean_checkpoint_and_other_modes_keep_theirs(tiny_model_dir):
    lean = lora_model(tiny_model_dir, "offload")
    assert all(isinstance(layer._gradient_checkpointing_func, LeanCheckpoint) for layer in layers_of(lean))
    # Only the last checkpointed layer keeps its input on the device: backward needs it at once.
    assert [layer._gradient_checkpointing_func.offload for layer in layers_of(lean)] == [True, False]
    lora.training_mode(lean)  # again, as after every validation: still installed, still the same plan
    assert [layer._gradient_checkpointing_func.offload for layer in layers_of(lean)] == [True, False]
    kept = lora_model(tiny_model_dir, "gpu")  # the same checkpoint, every input kept on the device
    assert [type(layer._gradient_checkpointing_func).__name__ for layer in layers_of(kept)] == ["LeanCheckpoint"] * 2
    lora.training_mode(kept)
    assert [layer._gradient_checkpointing_func.offload for layer in layers_of(kept)] == [False, False]
    unsloth = lora_model(tiny_model_dir, "unsloth")
    assert not any(isinstance(layer._gradient_checkpointing_func, LeanCheckpoint) for layer in layers_of(unsloth))


def test_lean_checkpoint_gradients_equal_an_uncheckpointed_models(tiny_model_dir, batch):
    model = lora_model(tiny_model_dir, "offload")
    lean = grads(model, batch)
    for layer in layers_of(model):
        layer.gradient_checkpointing = False
    assert max_relative_difference(lean, grads(model, batch)) <= 1e-5


def test_with_lora_dropout_the_recompute_replays_the_forwards_random_numbers(tiny_model_dir, batch):
    model = lora_model(tiny_model_dir, "offload", dropout=0.3)
    assert all(layer._gradient_checkpointing_func.preserve_rng for layer in layers_of(model))
    lean = grads(model, batch)
    for layer in layers_of(model):  # torch's own checkpoint, which replays the RNG state, as the reference
        layer._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    assert max_relative_difference(lean, grads(model, batch)) <= 1e-5
    for layer in layers_of(model):  # without the replay the recompute draws other masks: the check can fail
        layer._gradient_checkpointing_func = LeanCheckpoint(offload=False, preserve_rng=False)
    assert max_relative_difference(grads(model, batch), lean) > 1e-3


def test_an_input_without_grad_still_gives_the_layer_its_gradients():
    # Autograd never calls a checkpoint's backward when no input requires grad: the layer must run plainly instead.
    layer = torch.nn.Linear(4, 4)
    LeanCheckpoint(offload=False, preserve_rng=False)(layer, torch.randn(3, 4)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.norm() > 0


def test_a_second_backward_through_the_checkpoint_is_refused_with_the_fix(tiny_model_dir, batch):
    model = lora_model(tiny_model_dir, "offload")
    loss = perf.causal_lm_loss(model, **batch)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated twice.*gradient_checkpointing true"):
        loss.backward()
