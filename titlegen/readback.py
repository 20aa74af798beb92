"""GPU scalars read on the host without making the host wait for the GPU."""

from __future__ import annotations

from collections import deque

import torch


class LatestValue:
    """The newest of a stream of GPU scalars whose kernels have finished, as a CPU tensor.

    `.item()` on a GPU tensor waits for every kernel queued before it. Reading the loss after each step that way (as
    Lightning does for a `prog_bar=True` value) stops the host from queueing the next step while the GPU still runs
    this one, and the GPU idles while the host prepares the next batch. Here each value is copied to pinned host
    memory right behind the kernels that compute it, and `latest()` returns the newest copy that has landed: a step
    or so behind, never a wait.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[torch.Tensor, torch.cuda.Event]] = deque()
        self._latest: torch.Tensor | None = None

    def push(self, value: torch.Tensor) -> None:
        value = value.detach()
        if value.device.type != "cuda":  # on the CPU nothing to wait for; elsewhere (MPS) a plain, waiting copy
            self._latest = value.to("cpu", copy=True)
            return
        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        host.copy_(value, non_blocking=True)
        landed = torch.cuda.Event()
        landed.record(torch.cuda.current_stream(value.device))  # the stream the copy was queued on
        self._pending.append((host, landed))

    def latest(self) -> torch.Tensor | None:
        """The newest value whose copy has finished, or None before the first one has."""
        while self._pending and self._pending[0][1].query():
            self._latest = self._pending.popleft()[0]
        return self._latest
