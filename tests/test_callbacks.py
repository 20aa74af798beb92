"""Callbacks measured on their own: the throughput meter's tokens per second; the HPARAMS tab after a fit."""

from __future__ import annotations

from pathlib import Path
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


def test_a_fit_fills_tensorboards_hparams_tab(tiny_model_dir, pairs_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from tests.helpers import cli_args
    from titlegen.cli import main

    args = cli_args(tiny_model_dir, tmp_path, source=pairs_file, batch_size=4, eval_batch_size=4, progress_bar=False)
    args += ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
             "--model.val_generate_samples=2", "--model.learning_rate=3e-4"]  # fmt: skip
    cli = main(["fit", "--config", "full_lora.yaml", *args])
    plugin: dict[str, object] = {}
    for events in Path(cli.trainer.log_dir).glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag, raw in accumulator.PluginTagToContent("hparams").items():
            plugin[tag] = plugin_data_pb2.HParamsPluginData.FromString(raw)
    metrics = [info.name.tag for info in plugin["_hparams_/experiment"].experiment.metric_infos]
    assert metrics == ["hp/val_bertscore_f1"]
    hparams = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["learning_rate"].number_value == pytest.approx(3e-4)
    assert hparams["lora_scope"].string_value == "all" and hparams["seed"].number_value == 3407
