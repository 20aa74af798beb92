"""One training step, isolated: the model's own loss against titlegen's `causal_lm_loss`, on the same batches.

    python -m benchmarks.loss_step --model DIR --pairs JSONL --scopes all last

No Trainer, no DataLoader: forward + backward of each loss on the same right-padded batches (random order, as a raw
loop takes them), with and without bf16 autocast, median of repeats; peak memory; and a profiler table of the fast
path. It separates what the loss path itself changes from what the Trainer around it costs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import unsloth  # noqa: F401  (before transformers and peft, as Unsloth requires)

from benchmarks.common import Stopwatch, examples, lora_training_model, sample_records, training_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--scopes", nargs="+", default=["all", "last"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    items = examples(sample_records(args.pairs, args.batch_size * args.batches, seed=1), args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = training_batches(args.model, items, list(range(len(items))), args.batch_size, device)
    for scope in args.scopes:
        measure_scope(scope, batches, device, args)
        torch.cuda.empty_cache()


def measure_scope(scope: str, batches: list[dict[str, torch.Tensor]], device: str, args: argparse.Namespace) -> None:
    from titlegen import perf

    model = lora_training_model(args.model, scope, "offload", device)
    paths = {
        "model(...).loss": lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                           labels=b["labels"]).loss,
        "causal_lm_loss": lambda b: perf.causal_lm_loss(model, **b),
    }  # fmt: skip
    for name, loss_fn in paths.items():
        for autocast in (False, True):

            def step(batch: dict[str, torch.Tensor], loss_fn=loss_fn, autocast=autocast) -> float:  # noqa: ANN001
                with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast and device == "cuda"):
                    loss = loss_fn(batch)
                loss.backward()
                model.zero_grad(set_to_none=True)
                return loss.item()

            for batch in batches[:2]:
                step(batch)  # warm-up: compilation for new shapes
            watch, times = Stopwatch(), []
            watch.start()  # resets the peak once: it covers every repeat
            for _ in range(args.repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for batch in batches:
                    step(batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - start) / len(batches))
            watch.stop()
            print(
                f"{scope:5s} {name:16s} autocast={autocast!s:5s} {1000 * statistics.median(times):7.1f} ms/step"
                f"  peak {watch.peak_gib:.2f} GiB",
                flush=True,
            )
    if args.profile and device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for batch in batches[:3]:
                perf.causal_lm_loss(model, **batch).backward()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50))


if __name__ == "__main__":
    main()
