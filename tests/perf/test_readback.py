from __future__ import annotations

import pytest
import torch

from titlegen.perf.readback import Deferred, LatestValue


def test_on_the_cpu_the_latest_value_is_the_last_pushed_and_a_copy():
    latest = LatestValue()
    assert latest.latest() is None
    value = torch.tensor(2.5)
    latest.push(value)
    value += 1  # the caller may reuse its tensor; the shown value must not change with it
    assert latest.latest().item() == 2.5
    latest.push(torch.tensor(0.5))
    assert latest.latest().item() == 0.5


@pytest.mark.gpu
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


def test_deferred_values_are_read_one_push_late_with_their_tags_and_all_at_the_end():
    deferred = Deferred()
    value = torch.tensor([1.0, 0.0])
    deferred.push(value, tag=7)
    assert deferred.earlier() == []  # the newest value waits for the next push
    value += 5  # a copy was queued: the caller may reuse its tensor
    deferred.push(torch.tensor([0.0, 2.0]), tag=8)
    (tag, first), *rest = deferred.earlier()
    assert tag == 7 and first.tolist() == [1.0, 0.0] and rest == []
    assert deferred.earlier() == []  # each value is read once
    deferred.push(torch.tensor([3.0, 3.0]), tag=9)
    assert [(tag, v.tolist()) for tag, v in deferred.drain()] == [(8, [0.0, 2.0]), (9, [3.0, 3.0])]
    assert deferred.drain() == []


@pytest.mark.gpu
def test_on_a_gpu_the_value_before_the_newest_is_read_while_the_newest_step_still_runs():
    deferred = Deferred()
    deferred.push(torch.full((), 3.0, device="cuda"), tag="step 0")
    torch.cuda._sleep(2_000_000_000)  # ~1 s of the next step's GPU work, queued behind step 0's value
    deferred.push(torch.full((), 4.0, device="cuda"), tag="step 1")
    ((tag, value),) = deferred.earlier()
    assert tag == "step 0" and value.item() == 3.0 and value.device.type == "cpu"
    queued = torch.cuda.Event()
    queued.record()
    assert not queued.query(), "the read of step 0 did not wait for step 1's work"
    ((tag, value),) = deferred.drain()
    assert tag == "step 1" and value.item() == 4.0
