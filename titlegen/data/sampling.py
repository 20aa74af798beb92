"""Training order: random batches of similar length, so a batch pads to little more than its own samples.

Abstract lengths vary by a factor of 3-4 in arXiv, so a random batch of 8 pads every sample to its longest one and
a third of the computed tokens are padding. Grouping by length (shuffled within large random windows, then the
batches shuffled) keeps the order random at the scale that matters for SGD, as TRL's and HF Trainer's
`group_by_length` do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


class LengthGroupedSampler(DistributedSampler):
    """Indices for one rank, in an order whose batches have similar lengths, and under DDP the same step's batches
    on every rank too.

    The epoch's global batches of `batch_size * num_replicas` similar lengths are dealt to the ranks in turn (rank r
    takes positions r, r + W, ...), so each becomes one similar-length batch on every rank and the ranks finish their
    steps together. It is a `DistributedSampler` so that Lightning uses it as it is: Lightning wraps any other
    training sampler in a `DistributedSamplerWrapper` with `shuffle=True`, which permutes the indices before dealing
    them, so every rank would train on random batches padded to their longest sample.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        window_batches: int = 64,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        """Args:
        lengths: token count of each sample.
        batch_size: samples per batch on one device.
        seed: the order is a function of (seed, epoch) only, so runs with the same seed see the same batches.
        window_batches: samples are sorted by length within random windows of this many (global) batches.
        num_replicas: the number of ranks (the Trainer's world size).
        rank: this process's rank among them.
        """
        if batch_size <= 0 or window_batches <= 0:
            raise ValueError(f"batch_size={batch_size} and window_batches={window_batches} must be positive")
        # Given both numbers, DistributedSampler only checks them and sizes the rank's share (ceil(n / replicas),
        # the last global batch topped up with samples from the epoch's start, as it does).
        self.lengths = list(lengths)
        super().__init__(self.lengths, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.window_batches = window_batches
        self._resume: tuple[int, int] | None = None

    def batches(self) -> list[list[int]]:
        """The epoch's global batches (each `batch_size * num_replicas` indices), longest first."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        group = self.batch_size * self.num_replicas
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
        already trained on, so the resumed run sees the batches the uninterrupted one would have. The loader ends
        where the epoch ends, on every rank at the same step."""
        self._resume = (epoch, batches_done) if batches_done > 0 else None
        self.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        order = [i for batch in self.batches() for i in batch]
        # Every rank the same number of samples: the epoch topped up from its start (cyclically, for an epoch shorter
        # than the ranks), before any resume cut, so a resumed epoch ends with the uninterrupted one's samples.
        order += (order * -(-self.total_size // max(len(order), 1)))[: self.total_size - len(order)]
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] * self.batch_size * self.num_replicas :]
            self._resume = None  # once: the next epochs are whole
        yield from order[self.rank :: self.num_replicas]
