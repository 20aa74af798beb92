"""The frozen decoder layers below the first adapted one: run once without autograd, and replayed as CUDA graphs.

With LoRA on the last layer only, PEFT and Unsloth still make the embeddings' output require grad, so by default
autograd records, recomputes and backpropagates through all 23 frozen layers of Qwen2.5-0.5B. `frozen_prefix` runs
them under no_grad instead, and the first adapted layer gets a fresh leaf input: the backward pass starts there.

On a 0.5B model that forward is then bound by the host: each layer is a compiled region whose guards, wrappers and
~80 kernel launches cost the host more time than the GPU needs for the layer (`benchmarks/step_profile.py`).
`GraphedPrefix` replays all of it as one CUDA graph per batch shape. The layers are frozen and run under no_grad,
so there is no autograd state to capture: the graph maps the prefix's input tensors (hidden states, masks, rotary
tables) to its output.

How a `GraphedPrefix` runs: the first call of a shape runs eagerly (it compiles and warms up Unsloth's block regions,
which must not happen during a capture); the second captures the graph; later ones copy the inputs into the graph's
static tensors and replay it. The graphs share one memory pool (they never run at the same time), and each replay's
output is cloned, so a later replay cannot overwrite a tensor that autograd still holds. Past `max_graphs` shapes,
on the CPU, and where a capture fails, calls run eagerly; `data.Collator`'s `pad_to_multiple_of` keeps the shape
count small. `modeling.training_mode` drops the graphs (when a fit starts, and after each validation): they hold the
addresses of weights that a move between devices would change.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)
_PLAIN = (type(None), bool, int, float, str)
GRAPHS_ATTRIBUTE = "_titlegen_prefix_graphs"  # where a backbone keeps its GraphedPrefix between steps


def first_trainable_layer(backbone: Any) -> int:
    """Index of the first decoder layer with a trainable weight (0 when the embeddings train; len() when none)."""
    if any(p.requires_grad for p in backbone.embed_tokens.parameters()):
        return 0
    for index, layer in enumerate(backbone.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return index
    return len(backbone.layers)


@contextlib.contextmanager
def frozen_prefix(backbone: Any, first: int, cuda_graphs: bool) -> Iterator[None]:
    """Run `backbone.layers[:first]` without autograd (as CUDA graphs when asked) and hand `layers[first]` an input
    that starts a fresh autograd graph.

    The frozen layers run under no_grad, without checkpointing (they keep no activations). The first adapted layer
    gets a leaf input, which requires grad when its reentrant checkpoint needs one. A no-op when `first` is 0 (the
    embeddings or the first layer train) or past the last layer.
    """
    layers = backbone.layers
    if not 0 < first < len(layers):
        yield
        return
    graphs = graphs_of(backbone, first) if cuda_graphs else None
    prefix = layers[:first]
    checkpointing = [getattr(layer, "gradient_checkpointing", False) for layer in prefix]
    grad_was_enabled = torch.is_grad_enabled()

    def enter(module: torch.nn.Module, args: Any) -> None:
        torch.set_grad_enabled(False)

    # Only a reentrant checkpoint needs an input that requires grad; without one, it would cost a needless dX pass.
    needs_grad = bool(getattr(layers[first], "gradient_checkpointing", False))

    def leave(module: torch.nn.Module, args: Any, output: Any) -> Any:
        torch.set_grad_enabled(grad_was_enabled)
        if isinstance(output, tuple):
            return (output[0].detach().requires_grad_(needs_grad), *output[1:])
        return output.detach().requires_grad_(needs_grad)

    for layer in prefix:
        layer.gradient_checkpointing = False  # a checkpoint inside no_grad would only copy activations around
    handles = [prefix[0].register_forward_pre_hook(enter), prefix[-1].register_forward_hook(leave)]
    try:
        with graphs.installed() if graphs is not None else contextlib.nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()
        for layer, value in zip(prefix, checkpointing, strict=True):
            layer.gradient_checkpointing = value
        torch.set_grad_enabled(grad_was_enabled)


def graphs_of(backbone: Any, first: int) -> GraphedPrefix | None:
    """The backbone's `GraphedPrefix` for layers[:first], kept across steps (its graphs are the point)."""
    if getattr(backbone.config, "attention_dropout", 0.0) > 0:
        return None  # random numbers: a replay would repeat the captured ones
    graphs = backbone.__dict__.get(GRAPHS_ATTRIBUTE)
    if graphs is None or len(graphs.layers) != first:
        graphs = backbone.__dict__[GRAPHS_ATTRIBUTE] = GraphedPrefix(backbone.layers[:first])
    return graphs


class GraphedPrefix:
    """Runs `layers` (frozen, called in order on one hidden-states tensor) as one CUDA graph per input shape.

    Each layer keeps its own arguments (masks differ between sliding-window and global layers, for instance); they
    are part of the graph's inputs. Tensors passed to several layers (rotary tables, a shared mask) are copied in once.
    """

    def __init__(self, layers: Sequence[torch.nn.Module], max_graphs: int = 16) -> None:
        self.layers = list(layers)
        self.max_graphs = max_graphs
        self.seen: set[Any] = set()
        self.eager_only: set[Any] = set()  # shapes whose capture failed
        self.graphs: dict[Any, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = {}
        self.pool: Any = None
        self.stream: torch.cuda.Stream | None = None
        self.replays = 0  # for tests and benchmarks: how many calls a graph served
        self.returns_tuple: bool | None = None  # what the layers return, learnt from a plain first run
        self._originals: list[Any] = [None] * len(self.layers)  # instance forwards that `installed` displaced
        self._installed = False
        self._told_cap = False

    def _eager(self, hidden: torch.Tensor, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> Any:
        out: Any = hidden
        for layer, original, (args, kwargs) in zip(self.layers, self._originals, calls, strict=True):
            # The layer's own forward, not the override `installed` puts there.
            forward = original if original is not None else type(layer).forward.__get__(layer)
            out = forward(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return out

    @staticmethod
    def _key(leaves: list[Any], spec: Any) -> tuple[Any, list[torch.Tensor], list[int]] | None:
        """What a graph depends on: the tensors' shapes, dtypes, strides and sharing, and the other values.

        Returns (key, the distinct tensors, each leaf's index among them or -1), or None when the call cannot be
        graphed: a CPU tensor, or an object (a cache, say) whose state a replay would not see change.
        """
        described: list[Any] = []
        distinct: list[torch.Tensor] = []
        slots: list[int] = []
        index: dict[int, int] = {}
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if not leaf.is_cuda:
                    return None
                slot = index.setdefault(id(leaf), len(distinct))
                if slot == len(distinct):
                    distinct.append(leaf)
                described.append((slot, tuple(leaf.shape), leaf.dtype, leaf.stride(), leaf.device.index))
                slots.append(slot)
            elif isinstance(leaf, _PLAIN):
                described.append(("value", leaf))
                slots.append(-1)
            else:
                return None
        return (str(spec), tuple(described)), distinct, slots

    def __call__(self, hidden: torch.Tensor, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> Any:
        """The output of the last layer; `calls` holds each layer's (args, kwargs) besides the hidden states."""
        leaves, spec = tree_flatten((hidden, calls))
        found = None if torch.is_grad_enabled() else self._key(leaves, spec)
        if found is None:
            return self._eager(hidden, calls)
        key, distinct, slots = found
        if key not in self.graphs:
            if key in self.eager_only or key not in self.seen or not self._room_for_another():
                self.seen.add(key)
                return self._eager(hidden, calls)
            try:
                self.graphs[key] = self._capture(leaves, spec, distinct, slots)
            except Exception as err:  # noqa: BLE001 (an op that cannot be captured: run this shape eagerly)
                log.warning("CUDA graph capture of the frozen layers failed (%s); this shape runs eagerly.", err)
                self.eager_only.add(key)
                return self._eager(hidden, calls)
        graph, statics, (out_leaves, out_spec) = self.graphs[key]
        for static, tensor in zip(statics, distinct, strict=True):
            static.copy_(tensor)
        graph.replay()
        self.replays += 1
        return tree_unflatten([x.clone() if isinstance(x, torch.Tensor) else x for x in out_leaves], out_spec)

    def _room_for_another(self) -> bool:
        if len(self.graphs) < self.max_graphs:
            return True
        if not self._told_cap:
            self._told_cap = True
            log.info("More than %d training batch shapes: the frozen layers of the others run without CUDA graphs"
                     " (--data.pad_to_multiple_of 64 makes fewer shapes).", self.max_graphs)  # fmt: skip
        return False

    def _capture(
        self, leaves: list[Any], spec: Any, distinct: list[torch.Tensor], slots: list[int]
    ) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]:
        # The same requires_grad as the inputs, so the compiled regions' guards match and nothing recompiles.
        statics = [t.clone().requires_grad_(t.requires_grad) for t in distinct]
        hidden, calls = tree_unflatten([statics[s] if s >= 0 else x for x, s in zip(leaves, slots, strict=True)], spec)
        with torch.cuda.device(hidden.device):  # the capture stream and pool on the tensors' GPU, whatever is current
            if self.stream is None:
                self.stream = torch.cuda.Stream()
                self.pool = torch.cuda.graph_pool_handle()
            # A warm-up on the capture stream first, as torch.cuda.graph asks: libraries set up per-stream state.
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self._eager(hidden, calls)
            torch.cuda.current_stream().wait_stream(self.stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                out = self._eager(hidden, calls)
        return graph, statics, tree_flatten(out)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Defer the layers' forwards to the last one, which runs them all (graphed) with each one's own arguments.

        The layers before it record their arguments and pass the hidden states through unchanged, in the form the
        layers return (a tensor or a tuple), learnt on the first call, which runs plainly.
        """
        if self._installed:
            raise RuntimeError("GraphedPrefix.installed() is already active for these layers")
        if self.returns_tuple is None:
            first = self.layers[0]

            def learn(module: torch.nn.Module, args: Any, output: Any) -> None:
                self.returns_tuple = isinstance(output, tuple)

            handle = first.register_forward_hook(learn)
            try:
                yield
            finally:
                handle.remove()
            return
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        last = len(self.layers) - 1

        def deferred(index: int) -> Any:
            def forward(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                if index == 0:
                    calls.clear()
                calls.append((args, kwargs))
                if index < last:
                    return (hidden,) if self.returns_tuple else hidden
                if len(calls) != len(self.layers):
                    raise RuntimeError(f"frozen layers called out of order: {len(calls)} calls for {last + 1} layers")
                return self(hidden, list(calls))

            return forward

        self._originals = [layer.__dict__.get("forward") for layer in self.layers]
        self._installed = True
        for index, layer in enumerate(self.layers):
            layer.forward = deferred(index)
        try:
            yield
        finally:
            for layer, original in zip(self.layers, self._originals, strict=True):
                if original is None:
                    layer.__dict__.pop("forward", None)
                else:
                    layer.forward = original
            self._originals = [None] * len(self.layers)
            self._installed = False
