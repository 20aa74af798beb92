from __future__ import annotations

import pytest
import torch

from titlegen.readback import LatestValue

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="asynchronous copies need a GPU (run on the device)")


def test_on_the_cpu_the_latest_value_is_the_last_pushed_and_a_copy():
    latest = LatestValue()
    assert latest.latest() is None
    value = torch.tensor(2.5)
    latest.push(value)
    value += 1  # the caller may reuse its tensor; the shown value must not change with it
    assert latest.latest().item() == 2.5
    latest.push(torch.tensor(0.5))
    assert latest.latest().item() == 0.5


@gpu
def test_on_a_gpu_a_value_shows_once_its_kernels_have_finished_without_a_wait():
    latest = LatestValue()
    first = torch.full((), 3.0, device="cuda")
    latest.push(first)
    torch.cuda.synchronize()
    assert latest.latest().item() == 3.0
    torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU work: the next copy cannot have landed when latest() asks
    latest.push(torch.full((), 4.0, device="cuda"))
    torch.cuda.set_sync_debug_mode("error")  # any wait for the GPU inside latest() would raise
    try:
        shown = latest.latest()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert shown.item() == 3.0 and shown.device.type == "cpu"
    torch.cuda.synchronize()
    assert latest.latest().item() == 4.0
