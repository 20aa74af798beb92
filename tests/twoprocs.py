"""Two local processes in one process group, for tests of collective code (gloo on the CPU, NCCL on two GPUs).

Kept apart from conftest, which imports Unsloth: each spawned process imports its test module afresh.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_two(worker: Callable[..., None], out_dir: Path, *args: Any) -> None:
    """Run `worker(rank, 2, port, str(out_dir), *args)` in two processes; the worker sets up the group on `port`."""
    mp.spawn(worker, args=(2, free_port(), str(out_dir), *args), nprocs=2, join=True)
