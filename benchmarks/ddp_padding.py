"""Tokens computed per real token on one rank: one GPU, two-rank DDP as Lightning dealt the batches until 2026-11-26h,
and two-rank DDP with the length-grouped sampler dealing them itself. CPU only, about a minute.

    python -m benchmarks.ddp_padding --pairs ../shared/datasets/arxiv/pairs.jsonl --tokenizer <tokenizer or model dir>

Lightning wraps a training sampler that is not a `DistributedSampler` in a `DistributedSamplerWrapper` with
`shuffle=True`, which permutes the indices before dealing them to the ranks: every rank then trains on random
batches, padded to their longest sample. The same samples, tokenizer and widths (multiples of 64) as the GPU
benchmark's (`benchmarks.train_speed`, seed 3407).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from benchmarks.common import examples, sample_records
from titlegen.sampling import LengthGroupedSampler


def widths(per_rank: list[list[int]], lengths: list[int], batch_size: int, multiple: int) -> list[int]:
    """Each rank's batches, in turn, padded as the collator pads them (to the longest sample, in steps of 64)."""
    return [
        multiple * math.ceil(max(lengths[i] for i in order[k : k + batch_size]) / multiple)
        for order in per_rank
        for k in range(0, len(order), batch_size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a directory with the tokenizer")
    parser.add_argument("--samples", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pad-to-multiple-of", type=int, default=64)
    parser.add_argument("--seed", type=int, default=3407)
    a = parser.parse_args()
    b, world = a.batch_size, 2
    print("| samples | run | mean width | computed / real tokens |\n|---|---|---|---|")
    for n in a.samples:
        warm = 6 * b * world  # train_speed's warm-up draw comes first, as there
        lengths = [len(x.prompt_ids) + len(x.target_ids) for x in examples(
            sample_records(a.pairs, warm + n, seed=a.seed)[warm:], a.tokenizer)]  # fmt: skip
        global_order = list(LengthGroupedSampler(lengths, b, seed=a.seed))
        runs = {
            "one GPU": [global_order],
            "DDP, Lightning's wrapper (until 2026-11-26h)": [
                list(DistributedSamplerWrapper(global_order, num_replicas=world, rank=r, shuffle=True, seed=a.seed))
                for r in range(world)
            ],
            "DDP, the sampler deals (now)": [
                list(LengthGroupedSampler(lengths, b, seed=a.seed, num_replicas=world, rank=r)) for r in range(world)
            ],
        }
        for name, per_rank in runs.items():
            w = widths(per_rank, lengths, b, a.pad_to_multiple_of)
            computed = sum(x * b for x in w)  # the last batch may be short: counted as full, as small as it is
            real = sum(lengths[i] for order in per_rank for i in order)
            print(f"| {n} | {name} | {statistics.mean(w):.0f} | {computed / real:.3f} |")


if __name__ == "__main__":
    main()
