"""Where a bare titlegen training step spends its time: GPU busy time against wall time, launches, host hot spots.

    python -m benchmarks.step_profile --model /tmp/titlegen-bench/qwen2.5-0.5b-shape --pairs pairs.jsonl --scope all

A step is host-bound when the GPU's kernel time is well under the step's wall time: then cutting GPU work (padding,
the LM head) does not shorten it, and only fewer or cheaper launches do. Of `--steps` + 2 batches, the first two warm
up and the rest are timed. titlegen's batches are length-sorted, so the timed ones are the longest; `--path raw`
takes the raw Unsloth loop's step instead, on random batches. This prints: wall ms a step, kernel ms a step (summed
over kernels), kernels launched a step, real and padded tokens a step; with `--kernels`, the profiler's rows
(operators and kernels) by GPU time; with `--tables`, the top CPU-side operators by self time (torch.profiler) and
the top Python functions by own time (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path
from typing import Any

import torch
import unsloth  # noqa: F401  (before transformers and peft, as Unsloth requires)

from benchmarks.common import (
    by_length,
    examples,
    largest_relative_difference,
    lora_training_model,
    loss_and_lora_grads,
    nonzero_lora_b,
    sample_records,
    training_batches,
)
from titlegen.perf import stepgraph
from titlegen.perf.prefix import GRAPHS_ATTRIBUTE


def main() -> None:
    from titlegen import perf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--scope", default="all", choices=["all", "last"])
    parser.add_argument("--path", default="titlegen", choices=["titlegen", "raw"],
                        help="raw: the raw Unsloth loop's step instead (random batches, bf16 autocast,"
                        " model(...).loss, Unsloth's checkpoint), for the same measurements side by side")  # fmt: skip
    parser.add_argument("--gradient-checkpointing", default="offload", choices=["offload", "gpu", "unsloth"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pad-to-multiple-of", type=int, default=1)
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--check", action="store_true", help="loss and LoRA gradients with graphs against without")
    parser.add_argument(
        "--kernels", action="store_true", help="also print the profiler's rows (operators and kernels) by GPU time"
    )
    parser.add_argument("--tables", action="store_true", help="also print torch.profiler's and cProfile's tables")
    args = parser.parse_args()

    n = args.batch_size * (args.steps + 2)
    items = examples(sample_records(args.pairs, n, seed=1), args.model)
    raw = args.path == "raw"
    if raw and args.check:
        parser.error("--check compares titlegen's graphs with its eager path: it takes no --path raw")
    if raw:
        args.gradient_checkpointing, args.pad_to_multiple_of, args.no_cuda_graphs = "unsloth", 1, True
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1)).tolist() if raw else list(range(n))
    batches = training_batches(args.model, items, by_length(items, order) if not raw else order, args.batch_size,
                               "cuda", args.pad_to_multiple_of)  # fmt: skip
    model = lora_training_model(args.model, args.scope, args.gradient_checkpointing, "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    if args.check:
        check_graphs(model, batches)
        return

    def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not raw:
            return perf.causal_lm_loss(model, **batch, cuda_graphs=not args.no_cuda_graphs)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss

    def step(batch: dict[str, torch.Tensor]) -> None:
        loss(batch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warm, timed = batches[:2], batches[2:]
    for _ in range(2):  # every shape twice: compiled, and (with graphs) captured, before the measured steps
        for batch in warm + timed:
            step(batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    torch.cuda.synchronize()
    wall_ms = 1000 * (time.perf_counter() - start) / len(timed)
    peak = torch.cuda.max_memory_allocated() / 2**30

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for batch in timed:
            step(batch)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_ms = sum(e.device_time for e in kernels) / 1000 / len(timed)
    tokens = sum(int(b["attention_mask"].sum()) for b in timed) / len(timed)
    replays = graph_counts(model)
    padded = sum(b["attention_mask"].numel() for b in timed) / len(timed)
    print(f"{args.path} path, scope {args.scope}, {args.gradient_checkpointing} checkpoint, batch {args.batch_size},"
          f" pad to {args.pad_to_multiple_of}, {replays}: wall"
          f" {wall_ms:.1f} ms/step, kernels {kernel_ms:.1f} ms/step (GPU busy {100 * kernel_ms / wall_ms:.0f}%),"
          f" {len(kernels) / len(timed):.0f} kernels/step, {tokens:.0f} real tokens/step ({padded:.0f} with padding),"
          f" peak {peak:.2f} GiB,"
          f" {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")  # fmt: skip
    if args.kernels:
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=70))
    if not args.tables:
        return
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))

    profiler = cProfile.Profile()
    profiler.enable()
    for batch in timed:
        step(batch)
    torch.cuda.synchronize()
    profiler.disable()
    for order_by in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order_by).print_stats(30)
        print(f"--- cProfile of {len(timed)} steps, by {order_by}\n{text.getvalue()}", flush=True)


def check_graphs(model: Any, batches: list[dict[str, torch.Tensor]]) -> None:
    """Losses and LoRA gradients with graphs against without; they should agree to the bit."""
    from titlegen import perf

    nonzero_lora_b(model)

    def grads(batch: dict[str, torch.Tensor], graphs: bool) -> tuple[float, dict[str, torch.Tensor]]:
        return loss_and_lora_grads(model, lambda: perf.causal_lm_loss(model, **batch, cuda_graphs=graphs))

    # Pairs of batches of one shape: the graph is captured on the first and replayed on the second, so a replay that
    # ignored its new inputs would show. Shapes repeat with --pad-to-multiple-of 64, as last_layer_lora.yaml pads.
    by_shape: dict[tuple[int, ...], list[dict[str, torch.Tensor]]] = {}
    for batch in batches:
        by_shape.setdefault(tuple(batch["input_ids"].shape), []).append(batch)
    pairs = [group[:2] for group in by_shape.values() if len(group) >= 2][:3]
    if not pairs:
        raise SystemExit("no two batches share a shape: use --pad-to-multiple-of 64 and more --steps")
    worst_loss = worst_grad = 0.0
    for first, second in pairs:
        for _ in range(3):  # the runner's first call learns the layers' return form; then the shape's first runs
            grads(first, True)  # eagerly and its second captures, on `first`'s inputs
        eager, graphed = grads(second, False), grads(second, True)  # replayed on `second`'s inputs
        worst_loss = max(worst_loss, abs(graphed[0] - eager[0]) / abs(eager[0]))
        worst_grad = max(worst_grad, largest_relative_difference(graphed[1], eager[1]))
    print(f"graphs against eager over {len(pairs)} pairs of batches: {graph_counts(model)}; largest"
          f" relative difference: loss {worst_loss:.2e}, LoRA gradients {worst_grad:.2e}")  # fmt: skip


def graph_counts(model: Any) -> str:
    """How many graphs of whole steps (`stepgraph`) and of frozen layers (`prefix`) were captured and replayed."""
    causal_lm = model.get_base_model()
    found = []
    for name, runner in (("step", causal_lm.__dict__.get(stepgraph.ATTRIBUTE)),
                         ("frozen-layer", causal_lm.model.__dict__.get(GRAPHS_ATTRIBUTE))):  # fmt: skip
        if runner:
            found.append(f"{len(runner.graphs)} {name} graphs, {runner.replays} replays")
    return ", ".join(found) or "no graphs"


if __name__ == "__main__":
    main()
