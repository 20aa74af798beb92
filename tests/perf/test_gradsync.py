"""gradsync: one all-reduce of the flattened gradients gives what DDP's reducer gives, bit for bit (two ranks: gloo on
the CPU, in CI; NCCL where two GPUs are)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from tests.twoprocs import spawn_two
from titlegen.perf import gradsync


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same weights on every rank and in every copy
        self.frozen = torch.nn.Linear(6, 5).requires_grad_(False)  # as the 4-bit base: not averaged
        self.a = torch.nn.Linear(5, 3)
        self.b = torch.nn.Linear(3, 2).double()  # a second dtype: its own buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(torch.tanh(self.frozen(x))).double()).pow(2).sum()


def _grads(module: torch.nn.Module) -> list[list[float]]:
    return [p.grad.flatten().tolist() for p in module.parameters() if p.requires_grad]


def _worker(rank: int, world: int, port: int, out_dir: str, backend: str) -> None:
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    def DDP(module: torch.nn.Module, **options: bool) -> DistributedDataParallel:  # noqa: N802 (reads as the class)
        return DistributedDataParallel(module.to(device), **options)

    try:
        torch.manual_seed(100 + rank)  # each rank its own batches
        batches = [torch.randn(4, 6, device=device) for _ in range(2)]
        result: dict = {}

        # DDP's reducer: the first batch accumulated locally (no_sync), the second synchronized.
        reference = DDP(_Net())
        with reference.no_sync():
            reference(batches[0]).backward()
        reference(batches[1]).backward()
        result["reducer"] = _grads(reference)

        flat = DDP(_Net())
        params = [p for p in flat.parameters() if p.requires_grad]
        sync = gradsync.take_over(SimpleNamespace(model=flat), params)
        assert sync is not None
        for x in batches:
            flat(x).backward()
        result["local"] = _grads(flat)  # the reducer is off: still this rank's own sums
        sync.average()
        result["flat"] = _grads(flat)
        result["views"] = len({p.grad.untyped_storage().data_ptr() for p in params})
        sync.release()
        result["released"] = flat.require_backward_grad_sync

        # A parameter without a gradient on one rank only counts as zeros there, and ends the same on both.
        flat.zero_grad(set_to_none=True)
        sync = gradsync.take_over(SimpleNamespace(model=flat), params)
        flat(batches[0]).backward()
        bias = flat.module.b.bias
        result["bias_local"] = bias.grad.tolist()
        if rank == 1:
            bias.grad = None
        sync.average()
        result["unused_on_rank1"] = bias.grad.tolist()
        sync.release()

        # Where DDP's reducer does more than average, it stays in charge.
        hooked = DDP(_Net())
        hooked.register_comm_hook(None, default_hooks.allreduce_hook)
        turned_off = DDP(_Net())
        turned_off.require_backward_grad_sync = False
        alone = [dist.new_group([r]) for r in range(world)][rank]  # every rank creates every group
        manual = SimpleNamespace(model=DDP(_Net()), lightning_module=SimpleNamespace(automatic_optimization=False))
        fp16 = SimpleNamespace(model=DDP(_Net()), precision_plugin=SimpleNamespace(scaler=torch.amp.GradScaler()))
        declined = {
            "manual_optimization": gradsync.take_over(manual, params),
            "grad_scaler": gradsync.take_over(fp16, params),
            "reducer_already_off": gradsync.take_over(SimpleNamespace(model=turned_off), params),
            "one_rank": gradsync.take_over(SimpleNamespace(model=DDP(_Net(), process_group=alone)), params),
            "not_ddp": gradsync.take_over(SimpleNamespace(model=_Net()), params),
            "unused_parameters": gradsync.take_over(
                SimpleNamespace(model=DDP(_Net(), find_unused_parameters=True)), params
            ),
            "static_graph": gradsync.take_over(SimpleNamespace(model=DDP(_Net(), static_graph=True)), params),
            "comm_hook": gradsync.take_over(SimpleNamespace(model=hooked), params),
            "no_params": gradsync.take_over(SimpleNamespace(model=DDP(_Net())), []),
        }
        result["declined"] = {name: value is None for name, value in declined.items()}
        Path(out_dir, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "backend",
    ["gloo", pytest.param("nccl", marks=pytest.mark.gpu(count=2, reason="NCCL needs 2 GPUs (run on the device)"))],
)
def test_one_flat_all_reduce_gives_ddps_gradients_exactly(tmp_path, backend):
    spawn_two(_worker, tmp_path, backend)
    rank0, rank1 = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["local"] != rank1["local"], "before averaging, each rank holds its own gradients: DDP did not reduce"
    assert rank0["flat"] == rank0["reducer"] and rank1["flat"] == rank1["reducer"], "bit for bit DDP's result"
    assert rank0["flat"] == rank1["flat"]
    assert rank0["reducer"] != rank0["local"], "the batches differ, so averaging changed the gradients"
    assert rank0["views"] == 2, "the averaged gradients are views of one buffer per dtype (float32, float64)"
    assert rank0["released"] is True
    assert rank0["unused_on_rank1"] == rank1["unused_on_rank1"] == [0.5 * g for g in rank0["bias_local"]]
    assert rank0["declined"] == {name: True for name in rank0["declined"]}, rank0["declined"]
