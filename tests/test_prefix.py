"""The frozen layers below the first adapter (`prefix`): run once without autograd, replayed as CUDA graphs.

On the CPU the graph runner runs the layers eagerly through the same wiring (every layer's call is deferred to the
last one, which runs them all with each one's own arguments), on the real Unsloth model and on toy stacks. The graph
half needs a GPU: CI has none, so those tests run on the device (`python -m pytest tests/test_prefix.py`,
docs/performance.md), and `python -m benchmarks.step_profile --scope last --check` compares a Qwen2.5-0.5B-shaped
model's loss and LoRA gradients with and without graphs.
"""

from __future__ import annotations

import pytest
import torch

from titlegen import perf
from titlegen.model import lora
from titlegen.perf import stepgraph
from titlegen.perf.prefix import GRAPHS_ATTRIBUTE, GraphedPrefix

from .conftest import build_tiny_model
from .test_loss_equivalence import loss_and_grads, trained_looking_lora, training_batch

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device)")


def test_deferred_prefix_keeps_the_loss_and_runs_each_frozen_layer_once_without_autograd(tmp_path, monkeypatch):
    model_dir = build_tiny_model(tmp_path / "qwen2-4-layers", "qwen2", layers=4)
    model = trained_looking_lora(model_dir, "last")
    # This test is about the eager step's frozen layers: on a GPU, whole-step graphs (`stepgraph`) would take the
    # step over from its second call.
    model.get_base_model().__dict__[stepgraph.ATTRIBUTE] = False
    device = next(model.parameters()).device  # the GPU where there is one (the device tool runs this file too)
    batch = {k: v.to(device) for k, v in training_batch(model_dir).items()}
    backbone = model.get_base_model().model
    layers = backbone.layers
    reference = loss_and_grads(model, perf.causal_lm_loss(model, **batch))
    # The first call runs plainly and learns what the layers return; the second defers them to the runner.
    loss_and_grads(model, perf.causal_lm_loss(model, **batch, cuda_graphs=True))
    runner = backbone.__dict__[GRAPHS_ATTRIBUTE]
    assert runner.returns_tuple is not None and len(runner.layers) == 3

    calls: list[tuple[int, bool]] = []
    layer_forward = type(layers[0]).forward

    def counted(layer, *args, **kwargs):
        calls.append((next(i for i, candidate in enumerate(layers) if candidate is layer), torch.is_grad_enabled()))
        return layer_forward(layer, *args, **kwargs)

    monkeypatch.setattr(type(layers[0]), "forward", counted)
    loss, grads = loss_and_grads(model, perf.causal_lm_loss(model, **batch, cuda_graphs=True))
    assert calls[:3] == [(0, False), (1, False), (2, False)], "the frozen layers run once each, without autograd"
    assert {index for index, _ in calls[3:]} == {3}, "then only the adapted layer (forward and recompute)"
    # The same kernels in the same order: equal to the bit on the CPU; a GPU may sum gradients in another order.
    tolerance = 0.0 if device.type == "cpu" else 1e-5
    assert loss == pytest.approx(reference[0], rel=tolerance)
    for name, grad in reference[1].items():
        assert grad.norm() > 0 and float((grads[name] - grad).norm() / grad.norm()) <= tolerance, name
    assert not any("forward" in layer.__dict__ for layer in layers), "the overrides are gone"
    if device.type == "cpu":
        assert runner.replays == 0 and not runner.graphs
    lora.training_mode(model)
    assert GRAPHS_ATTRIBUTE not in backbone.__dict__, "training_mode drops graphs that may hold stale addresses"


class Block(torch.nn.Module):
    """A toy layer with the decoder-layer calling convention: hidden states first, tensors and flags as kwargs."""

    def __init__(self, width: int, returns_tuple: bool = True) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)
        self.returns_tuple = returns_tuple

    def forward(self, hidden: torch.Tensor, scale: torch.Tensor, double: bool = False) -> torch.Tensor | tuple:
        out = torch.nn.functional.gelu(self.linear(hidden)) * scale + hidden
        out = out * 2 if double else out
        return (out,) if self.returns_tuple else out


def stack(layers, hidden, scales, double=False):
    """A backbone's loop: each layer gets its own arguments."""
    for layer, scale in zip(layers, scales, strict=True):
        out = layer(hidden, scale=scale, double=double)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


@pytest.mark.parametrize("returns_tuple", [True, False])
@torch.no_grad()
def test_each_deferred_layer_gets_its_own_arguments(returns_tuple):
    torch.manual_seed(0)
    layers = [Block(16, returns_tuple) for _ in range(3)]
    runner = GraphedPrefix(layers)
    x = torch.randn(2, 5, 16)
    scales = [torch.full((16,), value) for value in (0.5, -1.0, 3.0)]  # per-layer arguments, as masks can be
    expected = stack(layers, x, scales)
    for _ in range(3):  # the first call learns the return form, the others defer
        with runner.installed():
            assert torch.equal(stack(layers, x, scales), expected)
    assert runner.returns_tuple is returns_tuple


def test_installing_keeps_an_instance_forward_and_refuses_nesting():
    layers = [Block(8) for _ in range(2)]
    seen = []

    def hooked(hidden, *args, **kwargs):  # an instance forward someone else put there (accelerate's hooks do)
        seen.append(hidden.shape)
        return Block.forward(layers[0], hidden, *args, **kwargs)

    layers[0].forward = hooked
    runner = GraphedPrefix(layers)
    runner.returns_tuple = True
    x, scales = torch.randn(1, 3, 8), [torch.ones(8), torch.ones(8)]
    with torch.no_grad(), runner.installed():
        with pytest.raises(RuntimeError, match="already active"), runner.installed():
            pass
        stack(layers, x, scales)
    assert seen == [x.shape], "the runner called the displaced instance forward"
    assert layers[0].forward is hooked and "forward" not in layers[1].__dict__


def test_graph_keys_hold_the_plain_values_and_refuse_cpu_tensors_and_objects():
    spec = "spec"
    assert GraphedPrefix._key([None, 3], spec)[0] != GraphedPrefix._key([None, 4], spec)[0]
    assert GraphedPrefix._key([None, 3], spec)[0] == GraphedPrefix._key([None, 3], spec)[0]
    assert GraphedPrefix._key([torch.zeros(2), 3], spec) is None
    assert GraphedPrefix._key([None, object()], spec) is None  # a cache object: state a replay would not see


@gpu
@torch.no_grad()
def test_graph_replays_give_the_eager_result_for_new_inputs_and_two_shapes():
    torch.manual_seed(0)
    layers = [Block(64).cuda() for _ in range(3)]
    runner = GraphedPrefix(layers, max_graphs=2)

    def calls(scales, double=False):
        return [((), {"scale": s, "double": double}) for s in scales]

    scales = [torch.rand(64, device="cuda") for _ in layers]
    a, b = torch.randn(4, 8, 64, device="cuda"), torch.randn(2, 8, 64, device="cuda")
    first = runner(a, calls(scales))  # eager
    second = runner(a, calls(scales))  # capture
    assert len(runner.graphs) == 1 and runner.replays == 1
    assert torch.equal(first[0], stack(layers, a, scales)) and torch.equal(second[0], first[0])
    for _ in range(2):  # a second shape in the shared pool, then both alternating
        runner(b, calls(scales))
    for x in (a, b, a, b):
        fresh, new_scales = torch.randn_like(x), [torch.rand_like(s) for s in scales]
        assert torch.equal(runner(x, calls(new_scales))[0], stack(layers, x, new_scales))
        assert torch.equal(runner(fresh, calls(new_scales))[0], stack(layers, fresh, new_scales))
    assert len(runner.graphs) == 2 and runner.replays == 10
    assert torch.equal(second[0], first[0]), "outputs are copies: a later replay does not overwrite them"
    # A plain value is part of the key; past max_graphs, a new key runs eagerly, every time.
    for _ in range(3):
        assert torch.equal(runner(a, calls(scales, double=True))[0], stack(layers, a, scales, double=True))
    assert len(runner.graphs) == 2 and runner.replays == 10


@gpu
@torch.no_grad()
def test_a_tensor_shared_by_layers_is_one_input_and_sharing_is_in_the_key():
    shared = torch.rand(64, device="cuda")
    own = [torch.rand(64, device="cuda") for _ in range(2)]
    leaves = [torch.randn(2, 64, device="cuda"), shared, shared]
    key, distinct, slots = GraphedPrefix._key(leaves, "spec")
    assert len(distinct) == 2 and slots == [0, 1, 1]
    assert GraphedPrefix._key([leaves[0], *own], "spec")[0] != key


@gpu
def test_with_autograd_on_the_runner_stays_eager():
    layers = [Block(16).cuda() for _ in range(2)]
    runner = GraphedPrefix(layers)
    x = torch.randn(2, 4, 16, device="cuda", requires_grad=True)
    for _ in range(3):
        out = runner(x, [((), {"scale": torch.ones(16, device="cuda")})] * 2)
    out[0].sum().backward()
    assert x.grad is not None and not runner.graphs and runner.replays == 0
