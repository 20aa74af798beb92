"""Tokens computed per real token on one rank: one GPU, two-rank DDP as Lightning dealt the batches until 2026-11-26h,
and two-rank DDP with the length-grouped sampler dealing them itself; and the whole-step CUDA graphs each run needs
(`titlegen.stepgraph`), with a graph per 128 title positions (until 2026-11-27) and with the graphs' headroom (now).
CPU only, about a minute.

    python -m benchmarks.ddp_padding --pairs ../shared/datasets/arxiv/pairs.jsonl --tokenizer <tokenizer or model dir>

Lightning wraps a training sampler that is not a `DistributedSampler` in a `DistributedSamplerWrapper` with
`shuffle=True`, which permutes the indices before dealing them to the ranks: every rank then trains on random
batches, padded to their longest sample. The same samples, tokenizer and widths (multiples of 64) as the GPU
benchmark's (`benchmarks.train_speed`, seed 3407).

Each new graph costs a capture, about 4 steps' time, and under DDP every rank waits for it: "steps with a capture"
counts the steps on which some rank captures (the shape of a batch: its size, padded width and title positions).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from benchmarks.common import examples, sample_records
from titlegen.data.sampling import LengthGroupedSampler
from titlegen.perf.stepgraph import POSITION_BUCKET, rows_for, smallest_fitting


def widths(per_rank: list[list[int]], lengths: list[int], batch_size: int, multiple: int) -> list[int]:
    """Each rank's batches, in turn, padded as the collator pads them (to the longest sample, in steps of 64)."""
    return [
        multiple * math.ceil(max(lengths[i] for i in order[k : k + batch_size]) / multiple)
        for order in per_rank
        for k in range(0, len(order), batch_size)
    ]


def capture_steps(
    per_rank: list[list[int]], lengths: list[int], titles: list[int], b: int, multiple: int, headroom: bool
) -> str:
    """New graphs on each rank, and the steps on which some rank captures one: with a graph per `POSITION_BUCKET`
    title positions, or with `stepgraph`'s headroom (a graph serves later batches of its width that fit). Every new
    shape counts as a capture; a run's first shapes run eagerly instead, until a step compiles nothing."""
    steps: set[int] = set()
    counts = []
    for order in per_rank:
        graphs: dict[tuple[int, ...], None] = {}
        for step, k in enumerate(range(0, len(order), b)):
            batch = order[k : k + b]
            shape = (len(batch), widths([batch], lengths, b, multiple)[0])
            n = sum(titles[i] for i in batch)
            bucket = -(-n // POSITION_BUCKET) * POSITION_BUCKET
            if (smallest_fitting(graphs, shape, n) is None) if headroom else ((*shape, bucket) not in graphs):
                graphs[(*shape, rows_for(n) if headroom else bucket)] = None
                steps.add(step)
        counts.append(len(graphs))
    return f"{' / '.join(map(str, counts))} ({len(steps)} steps)"


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
    print(
        "| samples | run | mean width | computed / real tokens | graphs per rank (steps with a capture):"
        f" per {POSITION_BUCKET} positions | with headroom |\n|---|---|---|---|---|---|"
    )
    for n in a.samples:
        warm = 6 * b * world  # train_speed's warm-up draw comes first, as there
        samples = examples(sample_records(a.pairs, warm + n, seed=a.seed)[warm:], a.tokenizer)
        lengths = [len(x.prompt_ids) + len(x.target_ids) for x in samples]
        titles = [len(x.target_ids) for x in samples]  # the label positions each sample adds
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
            multiple = a.pad_to_multiple_of
            graphs = [capture_steps(per_rank, lengths, titles, b, multiple, headroom) for headroom in (False, True)]
            print(f"| {n} | {name} | {statistics.mean(w):.0f} | {computed / real:.3f} | {' | '.join(graphs)} |")


if __name__ == "__main__":
    main()
