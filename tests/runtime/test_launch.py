"""A DDP worker binds its own GPU before Unsloth's import initialises CUDA (titlegen.launch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO
from titlegen.runtime.launch import bind_rank_gpu


@pytest.fixture
def cuda_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Two GPUs that record which one is made current; the logic under test runs on a CPU-only machine too."""
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    return calls


@pytest.mark.parametrize(
    ("environ", "bound"),
    [({}, None), ({"LOCAL_RANK": "0"}, 0), ({"LOCAL_RANK": "1"}, 1), ({"LOCAL_RANK": "2"}, None),
     ({"LOCAL_RANK": "x"}, None)],
)  # fmt: skip
def test_binds_the_local_rank_gpu_when_it_exists(
    cuda_calls: list[int], environ: dict[str, str], bound: int | None
) -> None:
    assert bind_rank_gpu(environ) == bound
    assert cuda_calls == ([] if bound is None else [bound])


# A worker of local rank 1 that runs main.py's imports (binding its GPU first) or, as the control, the same imports
# without the binding; then selects its GPU as Lightning does and reports the GPUs (as torch numbers them) on which
# nvidia-smi sees a context of this process.
WORKER = """
import json, os, subprocess, sys
mode, sys.argv = sys.argv[1], ["main.py", "fit"]
if mode == "main":
    import main  # noqa: F401  (module level only: the bind, Unsloth, the CLI)
else:
    import unsloth, titlegen.cli  # noqa: F401
import torch
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # as Lightning does when the Trainer sets up
torch.zeros(1, device="cuda")
out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id", "--format=csv,noheader"],
                     capture_output=True, text=True, check=True).stdout
rows = [[field.strip().lower() for field in line.split(",")] for line in out.splitlines() if line.count(",") == 1]
mine = [bus_id for pid, bus_id in rows if pid == str(os.getpid())]
def bus(i):
    p = torch.cuda.get_device_properties(i)
    return f"{p.pci_domain_id:08x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}"
print(json.dumps(sorted(i for i in range(torch.cuda.device_count()) if any(m.startswith(bus(i)) for m in mine))))
"""


def worker_gpus(mode: str) -> list[int]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "LOCAL_RANK": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, mode], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.gpu(count=2)
@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs nvidia-smi")
def test_a_bound_worker_holds_no_context_on_gpu_0() -> None:
    control = worker_gpus("control")
    if not control:  # not even the context on GPU 1 that the worker made: nvidia-smi shows other (host) PIDs
        pytest.skip("nvidia-smi does not list this container's process IDs")
    # Without the binding, the imports leave rank 1 a context on GPU 0 (seen in DDP fits): the check can fail.
    assert control == [0, 1]
    assert worker_gpus("main") == [1]
