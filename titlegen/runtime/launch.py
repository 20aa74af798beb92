"""Process setup that has to happen before Unsloth is imported (and so before anything else initialises CUDA)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def bind_rank_gpu(environ: Mapping[str, str] = os.environ) -> int | None:
    """Make a multi-GPU worker's own GPU the current CUDA device; return its index, or None where nothing was done.

    Lightning starts the workers of a multi-GPU fit (and torchrun its processes) with `LOCAL_RANK` set, and selects
    each worker's GPU only when the Trainer sets up. Before that, a worker's start-up (its imports, Unsloth's first)
    initialised CUDA on the current device, GPU 0 for every process, so each worker of rank > 0 kept a second context
    on GPU 0: 0.7 to 1 GB of GPU 0's memory per extra GPU (`nvidia-smi --query-compute-apps` on 2x H200,
    2026-11-26h; bound, rank 1 holds a context on GPU 1 only). It did not measurably slow a step (docs/performance.md).

    Local rank i is GPU i, as with `--trainer.devices N` (Lightning's default) and torchrun. With an explicit list
    (`--trainer.devices [2,3]`) the mapping differs: choose the GPUs with `CUDA_VISIBLE_DEVICES=2,3` instead.
    """
    rank = environ.get("LOCAL_RANK")
    if rank is None or not rank.isdigit():
        return None
    import torch

    if not torch.cuda.is_available() or int(rank) >= torch.cuda.device_count():
        return None
    torch.cuda.set_device(int(rank))
    return int(rank)
