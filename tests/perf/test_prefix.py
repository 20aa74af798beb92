"""The frozen layers below the first adapter (`prefix.frozen_prefix`): run once each, without autograd, and the
backward pass starts at the first adapted layer, with the model's own loss and gradients."""

from __future__ import annotations

import torch

from tests.helpers import assert_same, loss_and_grads, trained_looking_lora, training_batch
from titlegen import perf
from titlegen.perf import stepgraph


def test_frozen_layers_run_once_each_without_autograd_and_keep_the_loss(tiny_models, monkeypatch):
    model_dir = tiny_models(arch="qwen2", layers=4)
    model = trained_looking_lora(model_dir, "last")
    # This test is about an eager step: on a GPU, whole-step graphs (`stepgraph`) would take the step over.
    model.get_base_model().__dict__[stepgraph.ATTRIBUTE] = False
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in training_batch(model_dir).items()}
    layers = model.get_base_model().model.layers
    reference = loss_and_grads(model, model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss)

    calls: list[tuple[int, bool]] = []
    layer_forward = type(layers[0]).forward

    def counted(layer, *args, **kwargs):
        calls.append((next(i for i, candidate in enumerate(layers) if candidate is layer), torch.is_grad_enabled()))
        return layer_forward(layer, *args, **kwargs)

    monkeypatch.setattr(type(layers[0]), "forward", counted)
    checkpointing = [layer.gradient_checkpointing for layer in layers]
    fast = loss_and_grads(model, perf.causal_lm_loss(model, **batch))
    assert calls[:3] == [(0, False), (1, False), (2, False)], "the frozen layers run once each, without autograd"
    assert {index for index, _ in calls[3:]} == {3}, "then only the adapted layer (forward and recompute)"
    assert_same(reference, fast)
    assert any(checkpointing) and [layer.gradient_checkpointing for layer in layers] == checkpointing, "restored"
