"""Length-grouped training order: every sample once, seeded, less padding, aligned across DDP ranks."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DistributedSampler

from tests.helpers import synthetic_pairs, write_jsonl
from titlegen.data.datamodule import TitleDataModule
from titlegen.data.sampling import LengthGroupedSampler


def arxiv_like_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(90, 420) for _ in range(n)]


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    computed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / computed


def test_every_sample_once_in_a_seeded_order():
    lengths = arxiv_like_lengths(1000)
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(1000))
    assert list(LengthGroupedSampler(lengths, batch_size=8, seed=3)) == first
    assert list(LengthGroupedSampler(lengths, batch_size=8, seed=4)) != first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(1000))


def test_batches_pad_far_less_than_random_ones_and_the_longest_comes_first():
    lengths = arxiv_like_lengths(2000)
    grouped = LengthGroupedSampler(lengths, batch_size=8, seed=0).batches()
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [order[i : i + 8] for i in range(0, 2000, 8)]
    assert padding_fraction(grouped, lengths) < 0.05 < 0.2 < padding_fraction(shuffled, lengths)
    assert max(lengths[i] for i in grouped[0]) == max(lengths)
    # Still random at the scale of the run: the first 20 batches are not the 20 longest.
    assert len({min(lengths[i] for i in b) > 380 for b in grouped[:20]}) == 2


def test_ranks_get_matching_batches_and_lightning_keeps_the_sampler():
    """Each rank deals itself its share of every global group, so each step's batches on the ranks are one group.
    Lightning replaces any training sampler that is not a DistributedSampler with a wrapper that shuffles the indices
    it deals, which would break the grouping under DDP; tests/test_ddp_fit.py checks a real DDP fit."""
    lengths = arxiv_like_lengths(203)
    ranks = [LengthGroupedSampler(lengths, batch_size=4, seed=1, num_replicas=2, rank=rank) for rank in range(2)]
    assert all(isinstance(sampler, DistributedSampler) for sampler in ranks)
    groups = ranks[0].batches()
    assert groups == ranks[1].batches() and all(len(g) == 8 for g in groups[:-1])
    per_rank = []
    for sampler in ranks:
        indices = list(sampler)
        assert len(indices) == len(sampler) == 102  # ceil(203 / 2): the odd sample out is topped up
        per_rank.append([indices[i : i + 4] for i in range(0, len(indices), 4)])
    for step, group in enumerate(g for g in groups if len(g) == 8):
        assert set(per_rank[0][step]) | set(per_rank[1][step]) == set(group)
    both = [i for batches in per_rank for b in batches for i in b]
    assert set(both) == set(range(203))
    with pytest.raises(ValueError, match="Invalid rank 2"):
        LengthGroupedSampler(lengths, batch_size=4, num_replicas=2, rank=2)


def test_datamodule_trains_on_grouped_batches(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    rows = synthetic_pairs(64, seed=2)
    for i, row in enumerate(rows):  # abstracts of very different lengths
        row["abstract"] = " ".join([row["abstract"]] * (1 + i % 4))
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_pairs(4, seed=9))

    def padding(group_by_length: bool) -> tuple[float, list[str]]:
        dm = TitleDataModule(
            train_file=str(train), validation_file=str(val), model_name=str(tiny_model_dir), batch_size=8,
            num_workers=0, group_by_length=group_by_length, max_seq_length=2048,
        )  # fmt: skip
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        mask = torch.cat([b["attention_mask"].flatten() for b in batches])
        return 1 - float(mask.float().mean()), [b["input_ids"].shape for b in batches]

    grouped, shapes = padding(True)
    plain, _ = padding(False)
    assert len(shapes) == 8 and all(s[0] == 8 for s in shapes)
    assert grouped < plain / 2, (grouped, plain)
    assert padding(True)[1] == shapes, "the order depends only on the seed"


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"window_batches": 0}])
def test_bad_sizes_are_rejected(bad):
    with pytest.raises(ValueError, match="must be positive"):
        LengthGroupedSampler([1, 2, 3], **{"batch_size": 2, **bad})
