"""Two real processes (gloo on the CPU): BERTScore inputs gather to the same de-duplicated set on both ranks."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from tests.twoprocs import spawn_two


def _sample(i: int) -> dict:
    return {"id": f"s{i}", "reference": f"ref {i}", "generated": f"gen {i}", "stopped": i % 2 == 0}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from titlegen.metrics import BERTScoreMetric, gather_from_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # Rank 0 holds samples 0-2, rank 1 holds 3-4 plus a repeat of 0, as DistributedSampler pads.
        mine = [_sample(i) for i in ([0, 1, 2] if rank == 0 else [3, 4, 0])]
        # What TitleGenModule._log_scores does with its generations before scoring them.
        gathered = list({g["id"]: g for g in gather_from_ranks(mine)}.values())
        metric = BERTScoreMetric()
        metric.update([g["id"] for g in mine], [g["generated"] for g in mine], [g["reference"] for g in mine])
        ids, preds, refs = metric.gathered()
        Path(out_dir, f"{rank}.json").write_text(json.dumps({"gathered": gathered, "metric": [ids, preds, refs]}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_the_same_deduplicated_samples(tmp_path):
    spawn_two(_worker, tmp_path)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1]
    gathered = sorted(results[0]["gathered"], key=lambda g: g["id"])
    assert gathered == [_sample(i) for i in range(5)]
    ids, preds, refs = results[0]["metric"]
    assert ids == [f"s{i}" for i in range(5)]
    assert preds == [f"gen {i}" for i in range(5)] and refs == [f"ref {i}" for i in range(5)]
