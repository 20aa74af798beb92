"""What is on the GPU at the moment of peak allocated memory, by where it was allocated, for titlegen's training step.

    python -m benchmarks.memory_peak --model /tmp/titlegen-bench/qwen2.5-0.5b-shape --pairs p.jsonl [--no-cuda-graphs]

Records the CUDA caching allocator's history (torch.cuda.memory._record_memory_history) from before the model loads,
replays it to find the moment of the most allocated bytes, and prints the tensors alive then, grouped by the first
Python frame outside torch that allocated them, largest first. Run it with and without `--no-cuda-graphs` (titlegen's
`--model.cuda_graphs false`) to see what the whole-step graphs add. The loop: `--steps` + 2 length-sorted batches,
each step with AdamW (fused) and clipping, three passes over them (compiled, captured, replayed).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import unsloth  # noqa: F401  (before transformers and peft, as Unsloth requires)

from benchmarks.common import by_length, examples, lora_training_model, sample_records, training_batches
from titlegen import perf


def site(frames: list[dict[str, Any]]) -> str:
    """The innermost frame outside torch and Python's own library: who asked for the memory."""
    for frame in frames:
        name = frame["filename"]
        if "/torch/" in name or name.startswith("<") or ("/lib/python3" in name and "site-packages" not in name):
            continue
        return f"{name.split('site-packages/')[-1]}:{frame['line']} {frame['name']}"
    return "(torch internals)"


def live_at_peak(trace: list[dict[str, Any]]) -> tuple[int, dict[int, dict[str, Any]]]:
    live: dict[int, dict[str, Any]] = {}
    total = peak = 0
    at_peak: dict[int, dict[str, Any]] = {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, at_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--scope", default="all", choices=["all", "last"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--pad-to-multiple-of", type=int, default=64)
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args()

    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    n = args.batch_size * (args.steps + 2)
    items = examples(sample_records(args.pairs, n, seed=1), args.model)
    batches = training_batches(args.model, items, by_length(items, list(range(n))), args.batch_size, "cuda",
                               args.pad_to_multiple_of)  # fmt: skip
    model = lora_training_model(args.model, args.scope, "offload", "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    for _ in range(3):  # compiled, captured, replayed
        for batch in batches:
            perf.causal_lm_loss(model, **batch, cuda_graphs=not args.no_cuda_graphs).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    peak, alive = live_at_peak(trace)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    streams: dict[int, int] = defaultdict(int)
    for event in alive.values():
        group = groups[site(event.get("frames", []))]
        group[0] += event["size"]
        group[1] += 1
        streams[event.get("stream", 0)] += event["size"]
    graphs = "without CUDA graphs" if args.no_cuda_graphs else "with CUDA graphs"
    print(f"scope {args.scope}, batch {args.batch_size}, {graphs}: peak allocated {peak / 2**30:.3f} GiB from the"
          f" trace, {torch.cuda.max_memory_allocated() / 2**30:.3f} GiB by the allocator's counter; trace events"
          f" {len(trace)}")  # fmt: skip
    print("by stream (MiB): " + ", ".join(f"{s}: {b / 2**20:.1f}" for s, b in sorted(streams.items())))
    for name, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{size / 2**20:9.1f} MiB {count:6d} tensors  {name}")


if __name__ == "__main__":
    main()
