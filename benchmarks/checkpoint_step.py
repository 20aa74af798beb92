"""The training step under each gradient-checkpoint function, bare (no Trainer), and a check of the offload path.

    python -m benchmarks.checkpoint_step --model /tmp/titlegen-bench/qwen2.5-0.5b-shape --pairs pairs.jsonl
    python -m benchmarks.checkpoint_step --model ... --pairs ... --check-offload

Timings: the same batches (sorted by length, as titlegen's sampler makes them; and random, for the raw-Unsloth path)
through one optimizer step each, under Unsloth's own checkpoint, titlegen's `LeanCheckpoint` (offloading), and
`LeanCheckpoint` keeping inputs on the GPU; median of repeats, peak memory, and a cProfile of host time.
`--check-offload`: the LoRA gradients of one batch with offloading against keeping the inputs on the device (the
same computation but for the host round trip, so they should agree to the bit on a deterministic GPU).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import statistics
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


def main() -> None:
    from titlegen import perf
    from titlegen.perf import checkpointing
    from titlegen.perf.checkpointing import LeanCheckpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check-offload", action="store_true")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    items = examples(sample_records(args.pairs, args.batch_size * args.batches, seed=1), args.model)

    def batches(order: list[int]) -> list[dict[str, torch.Tensor]]:
        return training_batches(args.model, items, order, args.batch_size, device)

    shuffled = list(range(len(items)))
    random.Random(0).shuffle(shuffled)
    random_batches, grouped_batches = batches(shuffled), batches(by_length(items, shuffled))
    print(f"padded tokens: random batches {sum(b['input_ids'].numel() for b in random_batches)}, grouped"
          f" {sum(b['input_ids'].numel() for b in grouped_batches)}", flush=True)  # fmt: skip

    model = lora_training_model(args.model, "all", "unsloth", device)  # Unsloth's own checkpoint function stays
    layers = model.get_base_model().model.layers
    unsloth_functions = [layer._gradient_checkpointing_func for layer in layers]

    def use(mode: str) -> None:
        if mode == "unsloth":
            for layer, function in zip(layers, unsloth_functions, strict=True):
                layer._gradient_checkpointing_func = function
        elif mode == "lean":
            checkpointing.use_lean_checkpointing(model)
        else:  # "lean-on-device"
            for layer in layers:
                layer._gradient_checkpointing_func = LeanCheckpoint(offload=False, preserve_rng=False)

    if args.check_offload:
        check_offload(model, use, grouped_batches[len(grouped_batches) // 2])
        return
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step(batch: dict[str, torch.Tensor], raw: bool) -> None:
        if raw:  # raw Unsloth's path: the model's own loss under bf16 autocast
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss  # fmt: skip
        else:
            loss = perf.causal_lm_loss(model, **batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    plan = [("unsloth", True, random_batches), ("unsloth", False, grouped_batches), ("lean", False, grouped_batches),
            ("lean-on-device", False, grouped_batches)]  # fmt: skip
    for mode, raw, run_batches in plan:
        use(mode)
        for batch in run_batches[:2]:
            step(batch, raw)  # warm-up: compilation for new shapes
        sync()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for batch in run_batches:
                step(batch, raw)
            sync()
            times.append((time.perf_counter() - start) / len(run_batches))
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
        path = "raw Unsloth path" if raw else "titlegen path"
        print(f"{mode:15s} {path:16s} {1000 * statistics.median(times):7.1f} ms/step  peak {peak:.2f} GiB", flush=True)
    for mode in ("unsloth", "lean"):
        use(mode)
        profiler = cProfile.Profile()
        sync()
        profiler.enable()
        for batch in grouped_batches[:3]:
            step(batch, False)
        sync()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
        print(f"--- host time of 3 titlegen steps, {mode} checkpoint\n{text.getvalue()}", flush=True)


def check_offload(model: Any, use: Any, batch: dict[str, torch.Tensor]) -> None:
    from titlegen import perf

    nonzero_lora_b(model)

    def grads() -> tuple[float, dict[str, torch.Tensor]]:
        return loss_and_lora_grads(model, lambda: perf.causal_lm_loss(model, **batch))

    worst = largest_relative_difference

    use("lean")
    offloaded, again = grads(), grads()
    use("lean-on-device")
    on_device = grads()
    use("unsloth")
    unsloth_own = grads()
    print(f"loss: offloaded {offloaded[0]:.6f}, on device {on_device[0]:.6f}, Unsloth's {unsloth_own[0]:.6f}")
    print(f"LoRA gradients, largest relative difference: offloaded run to run {worst(again[1], offloaded[1]):.2e};"
          f" offloaded vs on device {worst(offloaded[1], on_device[1]):.2e};"
          f" offloaded vs Unsloth's checkpoint {worst(offloaded[1], unsloth_own[1]):.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
