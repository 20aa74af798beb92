"""A whole training step (forward, title loss and backward) replayed as a CUDA graph per batch shape and size of title.

On a 0.5B model at batch 32 the step is bound by the host, not the GPU: 24 decoder layers x 3 passes (forward,
recompute, backward) of compiled regions, each with its guards, wrappers and ~80 kernel launches, keep the GPU
waiting about a third of each step. A graph replays the same
kernels without that Python. Unlike Unsloth's per-block graphs, the graph holds the backward too: the recompute of
each checkpointed layer, its gradients, and the LoRA weights' gradients, accumulated into buffers that every graph
shares.

How a step runs (`StepGraphs.__call__`, called by `loss.causal_lm_loss` when training on a GPU):
- until a step has run without compiling anything (torch.compile's count of graphs did not grow), a new batch shape
  runs eagerly first (the caller runs it when this returns None): compiling Unsloth's regions for a shape must not
  happen during a capture. After that, a new shape is captured the first time it comes, unless its batch size is
  new too (an epoch's last, smaller batch), which may recompile;
- a capture runs on a side stream (after one eager warm-up on that stream, once), with the layers' host copies
  (`checkpointing.LeanCheckpoint`'s offload) going to a pinned arena the graph owns. The allocator's cache is
  emptied first: the graphs' memory pool replaces it, and the two would otherwise both hold a step's memory;
- from then on it copies the batch into the graph's static inputs and replays it. The returned loss is an ordinary
  autograd output of the LoRA weights (`_Replayed`): its backward hands the graph's gradients to autograd, so
  Lightning's clipping, gradient accumulation and optimizer, and the averaging over DDP ranks (`gradsync`), see
  ordinary `.grad`s;
- with a `grad_seed` (float16's loss scale), the captured backward starts from it instead of 1, as the eager backward
  of the scaled loss does: the float16 gradients inside the graph are scaled too, and `_Replayed` divides the seed
  back out of what it hands over.

A shape is the padded batch (`data.pad_to_multiple_of`) and a number of title positions: a graph serves every batch
of its padded shape with up to that many positions, the rest being weight-0 padding rows (`loss.head_cross_entropy`'s
`weights`); a batch with more positions than any graph of its shape has gets a new graph, captured with
`HEADROOM` (rounded up to `POSITION_BUCKET`). Graphs are dropped when a
tensor the step reads (a weight, a buffer, a 4-bit quantization state, the rotary tables) has moved. Steps run
eagerly on the CPU, with dropout (a replay would repeat the captured random numbers), under autocast, with trainable
embeddings, with a gradient checkpoint other than `LeanCheckpoint` (none is fine), past `max_graphs` shapes, and
after a failed capture (which is not retried).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from titlegen.perf import patches, prefix
from titlegen.perf.checkpointing import LeanCheckpoint, PinnedArena, draws_random_numbers, pinned_arena

log = logging.getLogger(__name__)
ATTRIBUTE = "_titlegen_step_graphs"  # where a CausalLM keeps its StepGraphs between steps
# A batch's title positions (about 510 at batch 32 on the arXiv titles, varying by some 7% between batches of one
# width) vary more than its padded width, and a graph per 128 positions cost a capture per (width, bucket) pair:
# about 4 steps' time each, which under DDP every rank waits for. A graph is captured with room for 25% more than
# the batch that asked for it, in multiples of POSITION_BUCKET, and serves every later batch of its width that fits.
# On the benchmark's 16,384 arXiv samples at batch 32 (SmolLM2's tokenizer, counted on the CPU): 7 graphs instead of
# 16 on one GPU, and under 2-rank DDP 7 steps with a new graph on some rank instead of 21 (the ranks' widths agree,
# their position counts did not). The padding rows cost the LM head and loss about 190 positions a step beyond the
# batch's own, some 130 more than the per-128 buckets did.
POSITION_BUCKET = 128
HEADROOM = 1.25
Key = tuple[Any, ...]  # a graph's: the batch's shapes, dtypes and device, then its rows of title positions
StepBody = Callable[..., torch.Tensor]  # (input_ids, attention_mask, positions, targets, weights) -> mean loss


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    seed: torch.Tensor  # the gradient the captured backward starts from, set before each replay
    loss: torch.Tensor
    arena: PinnedArena  # kept alive with the graph: the graph writes to its addresses


class _Replayed(torch.autograd.Function):
    """The replayed loss as a function of the LoRA weights; backward returns the graph's gradients."""

    @staticmethod
    def forward(
        ctx: Any, runner: StepGraphs, loss: torch.Tensor, seed: torch.Tensor, *params: torch.Tensor
    ) -> torch.Tensor:
        ctx.runner, ctx.replay, ctx.seed = runner, runner.replays, seed
        return loss.clone()  # the static loss is overwritten by the next replay

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        runner: StepGraphs = ctx.runner
        if runner.replays != ctx.replay:
            raise RuntimeError(
                "A CUDA-graphed training step was replayed again before the backward of the previous one: its"
                " gradients are gone. Fix: one backward per loss, or train with --model.cuda_graphs false."
            )
        # The graph's gradients are those of seed x loss: this backward's own gradient replaces the seed.
        return None, None, None, *torch._foreach_mul(runner.grads, grad / ctx.seed)


def tensors_read(model: torch.nn.Module) -> tuple[int, ...]:
    """Addresses of what a captured step reads besides its inputs; a graph is valid while these do not change.

    Called before every step, so it reads the modules' own dictionaries: nn.Module's getattr raises (and formats) an
    AttributeError for every attribute a module lacks, which made this walk cost tens of milliseconds.
    """
    found: list[int] = []
    for module in model.modules():
        for tensor in patches.module_tensors(module):
            found.append(tensor.data_ptr())
            state = tensor.__dict__.get("quant_state")
            while state is not None:  # bitsandbytes' 4-bit state, and its nested state for the absmax
                found += [v.data_ptr() for v in vars(state).values() if isinstance(v, torch.Tensor)]
                state = getattr(state, "state2", None)
        found += [t.data_ptr() for t in patches.rotary_tables(module)]
    return tuple(found)


def rows_for(positions: int) -> int:
    """The title positions a new graph is captured for: `positions` x `HEADROOM`, rounded down to an integer, then
    up to whole `POSITION_BUCKET`s."""
    return max(1, -(-int(positions * HEADROOM) // POSITION_BUCKET)) * POSITION_BUCKET


def smallest_fitting(graphs: dict[Key, Any], shape: Key, positions: int) -> Key | None:
    """The key (`shape` + rows) of the graph with the fewest rows that still holds `positions`; None if none does."""
    fitting = [key for key in graphs if key[:-1] == shape and key[-1] >= positions]
    return min(fitting, key=lambda key: key[-1]) if fitting else None


def runner_of(causal_lm: torch.nn.Module) -> StepGraphs | None:
    """The model's StepGraphs, kept across steps; None where a step cannot be graphed."""
    runner = causal_lm.__dict__.get(ATTRIBUTE)
    if runner is None:
        embeddings = causal_lm.get_input_embeddings()
        # Other checkpoints than the lean one read or write state a graph cannot follow: Unsloth's offload grows
        # global buffers, torch's reads the RNG state.
        other_checkpoint = any(
            getattr(layer, "gradient_checkpointing", False)
            and not isinstance(patches.checkpoint_function(layer), LeanCheckpoint)
            for layer in causal_lm.model.layers
        )
        random = draws_random_numbers(causal_lm.config, [causal_lm])
        if random or other_checkpoint or any(p.requires_grad for p in embeddings.parameters()):
            runner = False  # remembered: all three are fixed once the adapters and the checkpoint are in place
        else:
            runner = StepGraphs([p for p in causal_lm.parameters() if p.requires_grad])
        causal_lm.__dict__[ATTRIBUTE] = runner
    return runner or None


class StepGraphs:
    """Captures and replays `body` plus its backward, as CUDA graphs keyed by batch shape and rows of title positions,
    for the LoRA weights `params`."""

    def __init__(self, params: list[torch.Tensor], max_graphs: int = 32) -> None:
        self.params = params
        self.grads = [torch.zeros_like(p) for p in params]  # every graph accumulates into these
        self.max_graphs = max_graphs
        self.graphs: dict[Key, _Graph] = {}
        self.seen: set[Key] = set()  # batch shapes (no rows) that ran eagerly
        self.reads: tuple[int, ...] | None = None
        self.stream: torch.cuda.Stream | None = None
        self.pool: Any = None
        self.arena: PinnedArena | None = None
        self.warmed = False
        self.settled = False  # a step ran without compiling: new shapes can be captured at once
        self._compiles_before: int | None = None  # torch.compile's graph count before the last eager step
        self.batch_sizes: set[int] = set()  # batch sizes that ran eagerly: a new one may compile
        self.failures = 0  # failed captures; after one, every step runs eagerly
        self.replays = 0  # for tests and benchmarks, and to pair each backward with its replay
        self.captures = 0  # for benchmarks: graphs captured, also those dropped since
        # Set to a list to time each replay on the GPU: (start, end, the batch's padded tokens); `autograph` reads it.
        self.timed: list[tuple[torch.cuda.Event, torch.cuda.Event, int]] | None = None
        self._told_cap = False

    def __call__(
        self,
        model: torch.nn.Module,
        body: StepBody,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        targets: torch.Tensor,
        grad_seed: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The step's loss with the graph's gradients behind it, or None: then run the step eagerly.

        `grad_seed`: a 0-dim float32 tensor on the GPU, the gradient that the caller's backward will give the loss
        (float16's loss scale); None for 1.
        """
        if not input_ids.is_cuda or self.failures or torch.is_autocast_enabled("cuda"):
            # Under autocast, a capture would bake in the addresses of autocast's cached casts of the weights.
            return None
        reads = tensors_read(model)
        if reads != self.reads:
            if self.reads is not None:
                if self.graphs:
                    log.info("The model's tensors moved: %d captured training steps dropped.", len(self.graphs))
                    self.pool = torch.cuda.graph_pool_handle()  # the old pool may still hold live tensors
                # The next step runs eagerly: it redoes what Unsloth builds lazily (its rotary tables, after a
                # validation), which must not happen inside a capture.
                self.seen.clear()
                self.settled = False
                self._compiles_before = None
            self.graphs.clear()
            self.reads = reads
        if self._compiles_before is not None:
            self.settled = patches.compiled_graph_count() == self._compiles_before
            self._compiles_before = None
        n = positions.shape[0]
        shape = (tuple(input_ids.shape), input_ids.dtype, tuple(attention_mask.shape), attention_mask.dtype,
                 input_ids.device.index)  # fmt: skip
        key = smallest_fitting(self.graphs, shape, n)
        entry = self.graphs[key] if key is not None else None
        if entry is None:
            # A new batch size (an epoch's last, smaller batch) may make torch.compile recompile: eagerly first.
            ready = self.settled and input_ids.shape[0] in self.batch_sizes
            if not (ready or shape in self.seen) or not self._room_for_another():
                self.seen.add(shape)
                self.batch_sizes.add(input_ids.shape[0])
                self._compiles_before = patches.compiled_graph_count()
                return None
            rows = rows_for(n)
            key = (*shape, rows)
            try:
                entry = self.graphs[key] = self._capture(model, body, input_ids, attention_mask, rows)
                self.captures += 1
            except Exception as err:  # noqa: BLE001 (an op that cannot be captured)
                # Not retried: an aborted capture can leave the allocator's graph pools in a state that a second
                # one would build on.
                self.failures += 1
                self.graphs.clear()
                if tensors_read(model) != reads:
                    # Whatever the capture built was never computed: an eager step would read uninitialised memory.
                    raise RuntimeError(
                        f"A CUDA graph capture of the training step failed ({err}) after replacing tensors the model"
                        " reads, which now hold no values. Fix: train with --model.cuda_graphs false."
                    ) from err
                log.warning("CUDA graph capture of the training step failed (%s): training goes on without graphs"
                            " (--model.cuda_graphs false does so from the start).", err)  # fmt: skip
                return None
            after = tensors_read(model)
            if after != reads:
                # The capture itself replaced a tensor the step reads (a table Unsloth builds lazily): this graph
                # rebuilds it on each replay and reads the new one, but the others read the old one.
                self.graphs = {key: entry}
                self.reads = after
        inputs = entry.inputs
        inputs["input_ids"].copy_(input_ids)
        inputs["attention_mask"].copy_(attention_mask)
        inputs["positions"][:n].copy_(positions)  # rows past n keep valid indices from earlier steps: weight 0
        inputs["targets"][:n].copy_(targets)
        inputs["weights"][:n].fill_(1.0)
        inputs["weights"][n:].fill_(0.0)
        if grad_seed is None:
            entry.seed.fill_(1.0)
        else:
            entry.seed.copy_(grad_seed)
        if self.timed is None:
            entry.graph.replay()
        else:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            entry.graph.replay()
            end.record()
            self.timed.append((start, end, input_ids.numel()))
        self.replays += 1
        return _Replayed.apply(self, entry.loss, entry.seed, *self.params)

    def release(self) -> None:
        """Drop every graph, with its memory pool and pinned arena (`autograph` chose eager steps: the caller stops
        asking for graphs). A later call captures anew."""
        self.graphs.clear()
        self.timed = None
        self.arena = self.stream = self.pool = None
        self.warmed = False
        torch.cuda.empty_cache()  # the pool's memory, back to the device

    def _room_for_another(self) -> bool:
        if len(self.graphs) < self.max_graphs:
            return True
        if not self._told_cap:
            self._told_cap = True
            log.info("More than %d training step graphs: further batch shapes run without CUDA graphs"
                     " (--data.pad_to_multiple_of 64 makes fewer shapes).", self.max_graphs)  # fmt: skip
        return False

    def _step(self, body: StepBody, inputs: dict[str, torch.Tensor], seed: torch.Tensor) -> torch.Tensor:
        torch._foreach_zero_(self.grads)
        with torch.enable_grad():
            loss = body(**inputs)
            loss.backward(seed)
        return loss.detach()

    def _capture(
        self, model: torch.nn.Module, body: StepBody, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: int
    ) -> _Graph:
        device = input_ids.device
        inputs = {
            "input_ids": input_ids.clone(),
            "attention_mask": attention_mask.clone(),
            "positions": torch.zeros(rows, dtype=torch.long, device=device),
            "targets": torch.zeros(rows, dtype=torch.long, device=device),
            "weights": torch.zeros(rows, dtype=torch.float32, device=device),
        }
        seed = torch.ones((), dtype=torch.float32, device=device)
        embeddings = model.get_input_embeddings().weight
        # Room for the input (batch x width x hidden) of every layer that offloads it, at the longest width the model
        # takes, so that the shapes captured later fit the same arena. None with LoRA on the last layer only (the
        # frozen layers do not checkpoint, and the last checkpointed layer keeps its input on the GPU) or with the
        # `gpu` checkpoint.
        layers = model.model.layers[prefix.first_trainable_layer(model.model) :]
        offloading = sum(
            bool(getattr(layer, "gradient_checkpointing", False))
            and bool(getattr(patches.checkpoint_function(layer), "offload", False))
            for layer in layers
        )
        width = max(input_ids.shape[1], int(getattr(model, "max_seq_length", 0) or 0))
        needed = offloading * input_ids.shape[0] * width * embeddings.shape[1] * embeddings.element_size()
        if self.arena is None or self.arena.capacity < needed:
            self.arena = PinnedArena(needed)  # graphs captured with the old one keep it
        saved = [p.grad for p in self.params]
        with torch.cuda.device(device):
            torch.cuda.empty_cache()
            if self.stream is None:
                self.stream, self.pool = torch.cuda.Stream(), torch.cuda.graph_pool_handle()
            try:
                for p, grad in zip(self.params, self.grads, strict=True):
                    p.grad = grad  # the backward accumulates into the shared buffers, in place
                self.stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.stream):
                    if not self.warmed:  # libraries set up per-stream state (cuBLAS workspaces) on first use
                        with pinned_arena(self.arena):
                            self._step(body, inputs, seed)
                        self.warmed = True
                    graph = torch.cuda.CUDAGraph()
                    # capture_begin rather than torch.cuda.graph: that one also runs gc.collect(), which would cost
                    # about a step's time for every shape. thread_local: other threads (NCCL's watchdog under DDP)
                    # may query events meanwhile.
                    graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
                    try:
                        with pinned_arena(self.arena):
                            loss = self._step(body, inputs, seed)
                    finally:
                        try:
                            graph.capture_end()
                        except Exception:
                            # Older torch raises here before routing allocations back from the pool; without this,
                            # the allocator would think a capture is still running.
                            with contextlib.suppress(Exception):
                                patches.end_allocate_to_pool(device.index, self.pool)
                            raise
            finally:
                torch.cuda.current_stream().wait_stream(self.stream)  # also after a failure: the warm-up's work
                for p, grad in zip(self.params, saved, strict=True):
                    p.grad = grad
        return _Graph(graph, inputs, seed, loss, self.arena)
