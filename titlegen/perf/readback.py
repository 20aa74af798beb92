"""GPU values read on the host without making it wait for the GPU: the newest that has landed, or one step late."""

from __future__ import annotations

from collections import deque
from typing import Any

import torch


def _copy_to_host(value: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A host copy of `value` and, for a CUDA tensor, the event after which it has landed: the copy goes to pinned
    memory behind the kernels that compute the value, without a wait. Elsewhere a plain copy (on the CPU nothing to
    wait for; on MPS a waiting one) and None."""
    value = value.detach()
    if value.device.type != "cuda":
        return value.to("cpu", copy=True), None
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    host.copy_(value, non_blocking=True)
    landed = torch.cuda.Event()
    landed.record(torch.cuda.current_stream(value.device))  # the stream the copy was queued on
    return host, landed


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
        host, landed = _copy_to_host(value)
        if landed is None:
            self._latest = host
        else:
            self._pending.append((host, landed))

    def latest(self) -> torch.Tensor | None:
        """The newest value whose copy has finished, or None before the first one has."""
        while self._pending and self._pending[0][1].query():
            self._latest = self._pending.popleft()[0]
        return self._latest


class Deferred:
    """Per-step GPU values read on the host one step late, for decisions every rank must take at the same step.

    A decision read in the step that computes its value waits for that step's kernels, and the GPU then idles while
    the host prepares the next step. Each value is copied to pinned
    host memory behind its kernels; `earlier()`, called after the next step's kernels are queued, returns the values
    pushed before that newest one: if it waits at all, the GPU still has the newest step's work queued.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[Any, torch.Tensor, torch.cuda.Event | None]] = deque()

    def push(self, value: torch.Tensor, tag: Any = None) -> None:
        """Queue the copy of `value` (read later, with `tag`: what the reader needs to know about its step)."""
        self._pending.append((tag, *_copy_to_host(value)))

    def earlier(self) -> list[tuple[Any, torch.Tensor]]:
        """(tag, value) of every value pushed before the newest one, oldest first, each read once."""
        return [self._take() for _ in range(len(self._pending) - 1)]

    def drain(self) -> list[tuple[Any, torch.Tensor]]:
        """(tag, value) of every value not read yet, the newest included: for the end of a run."""
        return [self._take() for _ in range(len(self._pending))]

    def _take(self) -> tuple[Any, torch.Tensor]:
        tag, host, landed = self._pending.popleft()
        if landed is not None and not landed.query():
            landed.synchronize()
        return tag, host
