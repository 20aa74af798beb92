"""Training order: random batches of similar length, so a batch pads to little more than its own samples.

Abstract lengths vary by a factor of 3-4 in arXiv, so a random batch of 8 pads every sample to its longest one and
a third of the computed tokens are padding. Grouping by length (shuffled within large random windows, then the
batches shuffled) keeps the order random at the scale that matters for SGD, as TRL's and HF Trainer's
`group_by_length` do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class LengthGroupedSampler(Sampler[int]):
    """Indices in an order whose consecutive `batch_size * world_size` runs have similar lengths.

    Under DDP, Lightning wraps this sampler in a `DistributedSamplerWrapper`, which deals the indices to the ranks in
    turn (rank r takes positions r, r + W, ...); a run of `batch_size * W` similar lengths therefore becomes one
    similar-length batch on every rank, and the ranks finish their steps together.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window_batches: int = 64) -> None:
        """Args:
        lengths: token count of each sample.
        batch_size: samples per batch on one device.
        seed: the order is a function of (seed, epoch) only, so runs with the same seed see the same batches.
        window_batches: samples are sorted by length within random windows of this many (global) batches.
        """
        if batch_size <= 0 or window_batches <= 0:
            raise ValueError(f"batch_size={batch_size} and window_batches={window_batches} must be positive")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window_batches = window_batches
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self, world_size: int = 1) -> list[list[int]]:
        """The epoch's global batches (each `batch_size * world_size` indices), longest first."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        group = self.batch_size * world_size
        window = group * self.window_batches
        full: list[list[int]] = []
        partial: list[list[int]] = []
        for start in range(0, len(order), window):
            ranked = sorted(order[start : start + window], key=lambda i: -self.lengths[i])
            for first in range(0, len(ranked), group):
                (full if len(ranked[first : first + group]) == group else partial).append(ranked[first : first + group])
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        if shuffled:
            # The longest batch first: a too-large batch size fails at step 1, not an hour into the run.
            longest = max(range(len(shuffled)), key=lambda b: self.lengths[shuffled[b][0]])
            shuffled.insert(0, shuffled.pop(longest))
        # Short groups go last, so that every full group stays aligned with the ranks' turns.
        return shuffled + partial

    def resume(self, epoch: int, batches_done: int) -> None:
        """Continue an interrupted run: epoch `epoch` starts after the `batches_done` (per-device) batches it had
        already trained on, so the resumed run sees the batches the uninterrupted one would have. On one process
        exactly; under DDP, when the epoch does not divide into full global batches, the last batch of each rank is
        topped up with already-trained samples (Lightning's wrapper fixes the epoch's length when it is built)."""
        self._resume = (epoch, batches_done) if batches_done > 0 else None
        self.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        world_size = _world_size()
        order = [i for batch in self.batches(world_size) for i in batch]
        if self._resume is not None and self._resume[0] == self.epoch:
            done = self._resume[1] * self.batch_size * world_size
            self._resume = None  # once: the next epochs are whole
            # One process: drop the trained batches, and the loader ends where the epoch ends. Under DDP, Lightning's
            # DistributedSamplerWrapper indexes a list of len(self) indices, so they move to the end instead, where
            # the epoch's batch count (Lightning stops at len(loader)) reaches at most the few that top up the last
            # batch of each rank.
            order = order[done:] if world_size == 1 else order[done:] + order[:done]
        yield from order
