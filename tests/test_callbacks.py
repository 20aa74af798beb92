"""Callbacks measured on their own: the throughput meter's tokens per second."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from titlegen import callbacks
from titlegen.callbacks import Throughput


def test_throughput_logs_real_tokens_per_second_over_its_window(monkeypatch):
    clock = iter([100.0, 104.0, 104.0])  # window start, measurement, next window start
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    logged: dict[str, float] = {}
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda name, value: logged.__setitem__(name, value))
    meter = Throughput(every_n_steps=2)
    masks = [torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.tensor([[1, 0, 0], [1, 1, 0]])]  # 5 + 3 real tokens
    for step, mask in enumerate(masks, start=1):
        trainer = SimpleNamespace(global_step=step, world_size=2)
        meter.on_train_batch_start(trainer, module, {"attention_mask": mask})
        meter.on_train_batch_end(trainer, module, None, {"attention_mask": mask})
    # 8 real tokens on each of 2 ranks in 4 s; padding is not counted.
    assert logged == {"perf/tokens_per_sec": pytest.approx(4.0)}
