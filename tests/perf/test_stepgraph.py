"""Whole training steps replayed as CUDA graphs (`stepgraph`): the eager loss and LoRA gradients, for new inputs.

The graphs need a GPU: the tests marked `gpu` compare the replayed step's loss and LoRA gradients with the eager
step's there (`python -m pytest tests/perf/test_stepgraph.py` on a machine with CUDA). What decides whether a step
can be graphed, and when a graph is stale, is tested on the CPU too.
"""

from __future__ import annotations

import logging

import pytest
import torch

from tests.helpers import assert_same, loss_and_grads, padded_batch, trained_looking_lora
from titlegen import perf
from titlegen.data import collate
from titlegen.model import loading, lora
from titlegen.perf import stepgraph


def lora_model(model_dir, scope, dropout=0.0, compute_dtype="auto"):
    """A LoRA model as a fit builds it (the lean offloading checkpoint), with adapters that look trained."""
    model = trained_looking_lora(model_dir, scope, "offload", dropout, compute_dtype)
    lora.training_mode(model)
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("scope", ["all", "last"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_replayed_step_gives_the_eager_loss_and_lora_gradients_for_new_inputs(tiny_models, scope, dtype):
    model_dir = tiny_models(arch="qwen2", layers=3)
    model = lora_model(model_dir, scope, compute_dtype=dtype)
    assert loading.compute_dtype_of(model) == getattr(torch, dtype)
    # float16 trains with the loss scaled (runtime.lossscale): the eager backward starts from the scale, and the
    # graph's backward from the same scale, its grad_seed (here one that cannot overflow the tiny model's gradients).
    scale = 2.0**10 if dtype == "float16" else 1.0
    grad_seed = torch.full((), scale, device="cuda") if dtype == "float16" else None

    def eager_step(batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
        return loss_and_grads(model, perf.causal_lm_loss(model, **batch) * scale)

    def graphed_step(batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
        return loss_and_grads(model, perf.causal_lm_loss(model, **batch, cuda_graphs=True, grad_seed=grad_seed) * scale)

    first, second = (padded_batch(model_dir, seed, "cuda") for seed in (7, 8))
    assert first["input_ids"].shape == second["input_ids"].shape
    assert not torch.equal(first["input_ids"], second["input_ids"])

    eager_first = eager_step(first)
    # A new shape runs eagerly first (it may compile); the second time it is captured and replayed.
    for _ in range(2):
        graphed_first = graphed_step(first)
    runner = model.get_base_model().__dict__[stepgraph.ATTRIBUTE]
    assert (len(runner.graphs), runner.replays) == (1, 1)
    assert_same(eager_first, graphed_first)

    eager = eager_step(second)
    graphed = graphed_step(second)
    assert runner.replays == 2, "the same graph, with the second batch copied in"
    assert_same(eager, graphed)
    assert abs(graphed[0] - graphed_first[0]) > 1e-4 * scale, "a replay that ignored its new inputs would repeat it"


@pytest.mark.gpu
def test_a_failed_capture_is_warned_once_and_the_steps_go_on_eagerly(tiny_model_dir, monkeypatch, caplog):
    model = lora_model(tiny_model_dir, "all")
    batch = padded_batch(tiny_model_dir, 7, "cuda")
    eager = loss_and_grads(model, perf.causal_lm_loss(model, **batch))  # builds Unsloth's rotary tables

    def failing_capture(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(stepgraph.StepGraphs, "_capture", failing_capture)
    with caplog.at_level(logging.WARNING, logger=stepgraph.__name__):
        # The first step of the shape runs eagerly, the second tries the capture, the rest stay eager.
        steps = [loss_and_grads(model, perf.causal_lm_loss(model, **batch, cuda_graphs=True)) for _ in range(4)]
    runner = model.get_base_model().__dict__[stepgraph.ATTRIBUTE]
    assert (runner.failures, runner.replays, len(runner.graphs)) == (1, 0, 0)
    warned = [r.getMessage() for r in caplog.records if r.name == stepgraph.__name__ and r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "capture of the training step failed" in warned[0], warned
    for step in steps:
        assert_same(eager, step)


@pytest.mark.gpu
def test_a_graph_whose_weights_moved_is_recaptured_and_a_second_replay_before_backward_is_refused(tiny_model_dir):
    model_dir = tiny_model_dir
    model = lora_model(model_dir, "all")
    batch = padded_batch(model_dir, 7, "cuda")
    # One step without the runner first: Unsloth builds its rotary tables at the first forward, which the runner
    # would take for tensors that moved (and run one more step eagerly).
    loss_and_grads(model, perf.causal_lm_loss(model, **batch))
    for _ in range(2):
        loss_and_grads(model, perf.causal_lm_loss(model, **batch, cuda_graphs=True))
    runner = model.get_base_model().__dict__[stepgraph.ATTRIBUTE]
    assert (len(runner.graphs), runner.replays) == (1, 1)
    old_graph = runner.graphs[next(iter(runner.graphs))].graph

    lora_a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    lora_a.data = lora_a.data * 1.5  # new storage: a replay of the old graph would read the freed one
    replays = runner.replays
    loss_and_grads(model, perf.causal_lm_loss(model, **batch, cuda_graphs=True))
    assert not runner.graphs and runner.replays == replays, "dropped; the shape runs eagerly once more first"
    graphed = loss_and_grads(model, perf.causal_lm_loss(model, **batch, cuda_graphs=True))
    assert len(runner.graphs) == 1 and runner.graphs[next(iter(runner.graphs))].graph is not old_graph
    assert_same(loss_and_grads(model, perf.causal_lm_loss(model, **batch)), graphed)

    loss = perf.causal_lm_loss(model, **batch, cuda_graphs=True)
    perf.causal_lm_loss(model, **batch, cuda_graphs=True)
    with pytest.raises(RuntimeError, match="replayed again before the backward of the previous one"):
        loss.backward()


@pytest.mark.gpu
def test_accumulated_replays_sum_like_eager_steps_and_a_new_batch_size_runs_eagerly_first(tiny_model_dir):
    model_dir = tiny_model_dir
    model = lora_model(model_dir, "all")
    first, second = (padded_batch(model_dir, seed, "cuda") for seed in (7, 8))
    loss_and_grads(model, perf.causal_lm_loss(model, **first))  # builds Unsloth's rotary tables
    for _ in range(2):  # eager (it may compile), then captured
        loss_and_grads(model, perf.causal_lm_loss(model, **first, cuda_graphs=True))
    runner = model.get_base_model().__dict__[stepgraph.ATTRIBUTE]
    assert (len(runner.graphs), runner.replays) == (1, 1)

    def accumulated(graphs: bool) -> dict[str, torch.Tensor]:
        # As Lightning accumulates two micro-batches: each loss scaled by 1/2, gradients summed in .grad.
        model.zero_grad(set_to_none=True)
        for batch in (first, second):
            (perf.causal_lm_loss(model, **batch, cuda_graphs=graphs) / 2).backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    eager, graphed = accumulated(False), accumulated(True)
    assert runner.replays >= 3
    for name, grad in eager.items():
        assert float((graphed[name] - grad).norm() / grad.norm()) <= 1e-2, name

    smaller = {k: v[:4] for k, v in first.items() if k != "label_positions"}  # a last, smaller batch
    before = runner.replays, len(runner.graphs)
    loss_and_grads(model, perf.causal_lm_loss(model, **smaller, cuda_graphs=True))
    assert (runner.replays, len(runner.graphs)) == before, "a new batch size runs eagerly first"
    loss_and_grads(model, perf.causal_lm_loss(model, **smaller, cuda_graphs=True))
    assert runner.replays == before[0] + 1 and not runner.failures


@pytest.mark.gpu
def test_a_graph_serves_later_batches_with_fewer_title_positions_and_one_with_more_gets_a_new_graph(tiny_model_dir):
    model_dir = tiny_model_dir
    model = lora_model(model_dir, "all")
    batch = padded_batch(model_dir, 7, "cuda")

    def with_labels(labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**batch, "labels": labels, "label_positions": collate.flat_label_positions(labels)}

    labelled = batch["labels"] != -100
    fewer = batch["labels"].clone()
    last = labelled.cumsum(1) == labelled.sum(1, keepdim=True)
    fewer[labelled & last] = -100  # each row's last title token unlabelled
    more = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)  # every real token a label
    n = batch["label_positions"].numel()
    assert n > with_labels(fewer)["label_positions"].numel() > 0
    assert with_labels(more)["label_positions"].numel() > stepgraph.rows_for(n)

    loss_and_grads(model, perf.causal_lm_loss(model, **batch))  # builds Unsloth's rotary tables
    for _ in range(2):  # eager (it may compile), then captured
        loss_and_grads(model, perf.causal_lm_loss(model, **batch, cuda_graphs=True))
    runner = model.get_base_model().__dict__[stepgraph.ATTRIBUTE]
    assert [key[-1] for key in runner.graphs] == [stepgraph.rows_for(n)] and runner.replays == 1

    eager = loss_and_grads(model, perf.causal_lm_loss(model, **with_labels(fewer)))
    graphed = loss_and_grads(model, perf.causal_lm_loss(model, **with_labels(fewer), cuda_graphs=True))
    assert (len(runner.graphs), runner.replays) == (1, 2), "the same graph, with weight-0 rows for the rest"
    assert_same(eager, graphed)

    eager = loss_and_grads(model, perf.causal_lm_loss(model, **with_labels(more)))
    graphed = loss_and_grads(model, perf.causal_lm_loss(model, **with_labels(more), cuda_graphs=True))
    assert (len(runner.graphs), runner.replays) == (2, 3), "captured at once: the shape and batch size ran before"
    assert_same(eager, graphed)
    graphed = loss_and_grads(model, perf.causal_lm_loss(model, **batch, cuda_graphs=True))
    assert (len(runner.graphs), runner.replays) == (2, 4) and not runner.failures
    assert_same(loss_and_grads(model, perf.causal_lm_loss(model, **batch)), graphed)


def test_a_new_graph_has_a_quarter_more_rows_than_its_batch_and_a_batch_takes_the_smallest_graph_that_fits():
    for n in range(1, 3000):
        rows = stepgraph.rows_for(n)
        assert rows % stepgraph.POSITION_BUCKET == 0 and rows >= int(n * 1.25) > rows - stepgraph.POSITION_BUCKET
    assert [stepgraph.rows_for(n) for n in (1, 102, 103, 104, 508)] == [128, 128, 128, 256, 640]
    shape, wider = ((32, 256), torch.long, (32, 256), torch.long, 0), ((32, 320), torch.long, (32, 320), torch.long, 0)
    graphs = {(*shape, 896): "b", (*shape, 640): "a", (*wider, 1024): "c"}
    assert [stepgraph.smallest_fitting(graphs, shape, n) for n in (1, 640, 641, 896)] == [
        (*shape, 640), (*shape, 640), (*shape, 896), (*shape, 896)
    ]  # fmt: skip
    assert stepgraph.smallest_fitting(graphs, shape, 897) is None, "another shape's larger graph does not serve it"
    assert stepgraph.smallest_fitting(graphs, wider, 1024) == (*wider, 1024)


def test_no_step_graphs_with_dropout_or_unsloths_checkpoint_and_none_on_the_cpu(tiny_model_dir, monkeypatch):
    with_dropout = lora_model(tiny_model_dir, "all", dropout=0.1)
    assert stepgraph.runner_of(with_dropout.get_base_model()) is None, "a replay would repeat the random numbers"
    unsloths = trained_looking_lora(tiny_model_dir, "all", "unsloth")
    lora.training_mode(unsloths)
    assert stepgraph.runner_of(unsloths.get_base_model()) is None, "its offload grows buffers a graph cannot see"
    model = lora_model(tiny_model_dir, "all")
    runner = stepgraph.runner_of(model.get_base_model())
    assert runner is not None and len(runner.params) == len([p for p in model.parameters() if p.requires_grad])
    if not torch.cuda.is_available():

        def tripwire(*args, **kwargs):
            raise AssertionError("the step runner was asked to graph a CPU step")

        monkeypatch.setattr(stepgraph.StepGraphs, "__call__", tripwire)
        batch = padded_batch(tiny_model_dir, 7, "cpu")
        assert perf.causal_lm_loss(model, **batch, cuda_graphs=True).grad_fn is not None


def test_the_tensors_a_step_reads_change_when_a_weight_or_the_rotary_table_moves(tiny_model_dir):
    peft_model = lora_model(tiny_model_dir, "all")
    device = next(peft_model.parameters()).device
    # A step first: on a GPU, Unsloth builds its rotary tables at the first forward.
    perf.causal_lm_loss(peft_model, **padded_batch(tiny_model_dir, 7, device)).backward()
    model = peft_model.get_base_model()
    before = stepgraph.tensors_read(model)
    assert stepgraph.tensors_read(model) == before, "nothing moved"
    weight = model.model.layers[0].mlp.down_proj.base_layer.weight
    absmax = weight.quant_state.absmax  # 4-bit on the CPU fallback too
    weight.quant_state.absmax = absmax.clone()
    assert stepgraph.tensors_read(model) != before, "a 4-bit weight's quantization state moved"
    weight.quant_state.absmax = absmax
    assert stepgraph.tensors_read(model) == before
    rotary = model.model.rotary_emb
    if hasattr(rotary, "multi_gpu_cos_cached"):  # Unsloth's tables (on a GPU): list entries, not buffers
        tables = rotary.multi_gpu_cos_cached
        index = next(i for i, t in enumerate(tables) if isinstance(t, torch.Tensor))
        tables[index] = tables[index].clone()
    else:  # transformers' rotary embedding (Unsloth's CPU fallback): a buffer
        rotary.inv_freq = rotary.inv_freq.clone()
    assert stepgraph.tensors_read(model) != before, "the rotary table moved (Unsloth replaces it when it grows)"
