"""The fast training loss equals the model's own loss: same value (1e-3 relative) and LoRA gradients (1e-2 relative).

Both paths run the real Unsloth 4-bit model with gradient checkpointing on the CPU; LoRA B starts at zero (so the A
gradients would be zero and prove nothing), so the adapters get random values first.
"""

from __future__ import annotations

import pytest
import torch

from titlegen import perf
from titlegen.data.collate import Collator
from titlegen.data.tokenization import chat_tokens, encode_pairs, load_tokenizer
from titlegen.model import loading, lora
from titlegen.model.lora import DEFAULT_TARGET_MODULES
from titlegen.perf import prefix

from .conftest import synthetic_pairs


def trained_looking_lora(model_dir, scope, checkpointing="unsloth", dropout=0.0):
    base = loading.load_base_model(str(model_dir), 512)
    model = lora.apply_lora(base, scope, 8, 16, dropout, DEFAULT_TARGET_MODULES, checkpointing, 0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.2)
    model.train()
    return model


def training_batch(model_dir, n=6):
    tokenizer = load_tokenizer(str(model_dir))
    examples = encode_pairs(synthetic_pairs(n, seed=7), tokenizer, 512)
    assert len({len(ex.prompt_ids) + len(ex.target_ids) for ex in examples}) > 1, "a padded batch"
    return Collator(chat_tokens(tokenizer).pad_id, for_generation=False)(list(enumerate(examples)))


def loss_and_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return loss.item(), grads


def assert_same(reference, fast):
    (ref_loss, ref_grads), (fast_loss, fast_grads) = reference, fast
    assert fast_loss == pytest.approx(ref_loss, rel=1e-3)
    assert fast_grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        assert ref.norm() > 0, f"{name}: a zero gradient would make this comparison vacuous"
        relative = float((fast_grads[name] - ref).norm() / ref.norm())
        assert relative <= 1e-2, f"{name}: gradient differs by {relative:.2e} (relative)"


@pytest.mark.parametrize("scope", ["all", "last", [1]])
@pytest.mark.parametrize("arch_dir", ["tiny_model_dir", "tiny_llama_dir"])
def test_fast_loss_equals_the_models_own_loss(arch_dir, scope, request):
    model_dir = request.getfixturevalue(arch_dir)
    model = trained_looking_lora(model_dir, scope)
    batch = training_batch(model_dir)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    reference = loss_and_grads(model, model(**inputs).loss)
    assert_same(reference, loss_and_grads(model, perf.causal_lm_loss(model, **batch)))
    # Without the collator's label positions the loss finds them itself.
    assert_same(reference, loss_and_grads(model, perf.causal_lm_loss(model, **inputs)))
    # The context manager leaves nothing behind: the next step (and the model's own loss) runs as before.
    assert torch.is_grad_enabled()
    assert_same(reference, loss_and_grads(model, model(**inputs).loss))


def test_frozen_layers_below_the_adapter_run_once_without_autograd(tiny_llama_dir):
    """With LoRA on the last layer only, the frozen layers are neither recorded, recomputed nor backpropagated."""
    model = trained_looking_lora(tiny_llama_dir, "last")
    layers = model.get_base_model().model.layers
    assert prefix.first_trainable_layer(model.get_base_model().model) == len(layers) - 1
    calls: dict[int, list[bool]] = {i: [] for i in range(len(layers))}
    for i, layer in enumerate(layers):
        # Record, for each forward of each layer, whether its output joined the autograd graph.
        layer.register_forward_hook(
            lambda module, args, out, i=i: calls[i].append((out[0] if isinstance(out, tuple) else out).requires_grad)
        )
    batch = training_batch(tiny_llama_dir)

    def run(loss_fn):
        for record in calls.values():
            record.clear()
        loss_fn().backward()
        return {i: list(record) for i, record in calls.items()}

    fast = run(lambda: perf.causal_lm_loss(model, **batch))
    assert fast[0] == [False] and fast[1] == [False], "frozen layers: one forward, outside autograd"
    last = fast[len(layers) - 1]
    assert any(last), "the adapted layer is differentiated"
    # The model's own path records the frozen layers too (the embeddings' output requires grad), so the backward
    # pass crosses every one of them (and, with checkpointing on the GPU, recomputes them first).
    reference = run(
        lambda: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    )
    assert reference[0][0] and reference[1][0], reference
