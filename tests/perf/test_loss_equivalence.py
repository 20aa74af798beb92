"""The fast training loss equals the model's own loss: same value (1e-3 relative) and LoRA gradients (1e-2 relative).

Both paths run the real Unsloth 4-bit model with gradient checkpointing on the CPU; LoRA B starts at zero (so the A
gradients would be zero and prove nothing), so the adapters get random values first.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_same, loss_and_grads, trained_looking_lora, training_batch
from titlegen import perf
from titlegen.perf import prefix


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
