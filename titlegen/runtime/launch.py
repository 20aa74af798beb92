"""Process setup that has to happen before Unsloth is imported (and so before anything else initialises CUDA)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from titlegen.runtime import console


def bind_rank_gpu(environ: Mapping[str, str] = os.environ) -> int | None:
    """Make a multi-GPU worker's own GPU the current CUDA device; return its index, or None where nothing was done.

    Lightning starts the workers of a multi-GPU fit (and torchrun its processes) with `LOCAL_RANK` set, and selects
    each worker's GPU only when the Trainer sets up. Before that, a worker's start-up (its imports, Unsloth's first)
    initialises CUDA on the current device, GPU 0 for every process, so each worker of rank > 0 would keep a second
    context on GPU 0 (most of a GB of GPU 0's memory per extra GPU).

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


def import_unsloth_first() -> None:
    """Prepare a process that builds models: its GPU bound (DDP workers), the import notices silenced, and Unsloth
    imported, since it patches transformers, peft and trl when imported and must come before them."""
    if importlib.util.find_spec("unsloth") is None:
        return
    bind_rank_gpu()  # a DDP worker's CUDA context on its own GPU, not GPU 0 (the imports initialise CUDA)
    console.before_imports()
    import unsloth  # noqa: F401
