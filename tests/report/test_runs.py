"""Which runs an experiment's result is made of: the newest test run per training seed, the fit run of each tested
checkpoint wherever the logs were moved, and what old or odd run folders still give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.report.runfolders import per_title, write_fit_run, write_test_run
from titlegen.report import runs

IDS = [f"t{i}" for i in range(10)]


def scores(value: float) -> dict[str, np.ndarray]:
    return per_title(IDS, np.full(len(IDS), value), seed=0)


def test_newest_test_run_per_fit_seed(tmp_path):
    logs = tmp_path / "logs"
    exp = logs / "full_lora"
    seed1 = write_fit_run(logs, exp / "version_0", seed=1)
    write_test_run(exp / "version_1", IDS, scores(0.1), "a", seed1)
    seed2 = write_fit_run(logs, exp / "version_2", seed=2)
    write_test_run(exp / "version_3", IDS, scores(0.2), "b", seed2)
    write_test_run(exp / "version_10", IDS, scores(0.3), "c", seed1)  # a retest of seed 1's checkpoint
    write_test_run(exp / "version_4", IDS, scores(0.4), "d", seed2)  # numbered 4 < 10: older than version_10
    experiment = runs.load_experiment(logs, "full_lora")
    assert [run.run_dir.name for run in experiment.runs] == ["version_10", "version_4"]
    assert experiment.seeds == [1, 2]
    assert [run.value("bertscore_f1") for run in experiment.runs] == [pytest.approx(0.3), pytest.approx(0.4)]
    assert experiment.per_title() == {i: pytest.approx(0.35) for i in IDS}


def test_runs_without_a_fit_keep_only_the_newest(tmp_path):
    logs = tmp_path / "logs"
    for version, value in ((2, 0.2), (11, 0.5), (9, 0.9)):
        write_test_run(logs / "baseline" / f"version_{version}", IDS, scores(value), "zero-shot", None)
    experiment = runs.load_experiment(logs, "baseline")
    assert [run.run_dir.name for run in experiment.runs] == ["version_11"]
    assert experiment.seeds == [] and experiment.runs[0].fit is None
    assert runs.load_experiment(logs, "full_lora") is None


def test_per_title_keeps_the_ids_every_seed_titled(tmp_path):
    logs = tmp_path / "logs"
    exp = logs / "last_layer_lora"
    write_test_run(exp / "version_1", IDS, scores(0.2), "a", write_fit_run(logs, exp / "version_0", seed=5))
    write_test_run(
        exp / "version_3",
        IDS[3:],
        per_title(IDS[3:], np.full(7, 0.6), 0),
        "b",
        write_fit_run(logs, exp / "version_2", seed=6),
    )
    assert runs.load_experiment(logs, "last_layer_lora").per_title() == {i: pytest.approx(0.4) for i in IDS[3:]}


def test_fit_run_dir_is_found_inside_the_logs_the_report_reads(tmp_path):
    logs = tmp_path / "copied_logs"
    fit = logs / "full_lora" / "version_0"
    point = logs / "sweeps" / "lr_scope" / "learning_rate=0.001,lora_scope=all" / "version_0"
    fit.mkdir(parents=True)
    point.mkdir(parents=True)
    assert runs.fit_run_dir("lightning_logs/full_lora/version_0/checkpoints/last.ckpt", logs) == fit
    assert runs.fit_run_dir("/elsewhere/logs/full_lora/version_0/checkpoints/x.ckpt", logs) == fit
    nested = "lightning_logs/sweeps/lr_scope/learning_rate=0.001,lora_scope=all/version_0/checkpoints/last.ckpt"
    assert runs.fit_run_dir(nested, logs) == point
    assert runs.fit_run_dir(str(fit / "checkpoints" / "last.ckpt"), tmp_path / "other") == fit, "absolute, existing"
    assert runs.fit_run_dir("lightning_logs/full_lora/version_7/checkpoints/last.ckpt", logs) is None
    assert runs.fit_run_dir(None, logs) is None


def test_old_runs_lack_measures_without_failing(tmp_path):
    logs = tmp_path / "logs"
    write_test_run(logs / "baseline" / "version_0", IDS, scores(0.3), "old", None, old=True)
    run = runs.load_experiment(logs, "baseline").runs[0]
    assert run.value("bertscore_f1") == pytest.approx(0.3)
    assert run.value("rouge_l") is None and run.sample_values("copy_rate") is None and run.by_id("rouge_l") is None


def test_first_sentence_has_no_stop_rate_but_every_other_measure(tmp_path):
    logs = tmp_path / "logs"
    values = scores(0.3)
    write_test_run(logs / "first_sentence" / "version_0", IDS, values, "first", None, titles="first_sentence")
    run = runs.load_experiment(logs, "first_sentence").runs[0]
    assert run.value("stop_rate") is None and run.sample_values("stop_rate") is None
    assert run.value("copy_rate") == pytest.approx(values["copy_rate"].mean())
    assert sorted(run.sample_values("title_words")) == sorted(values["title_words"])


def test_a_python_tag_in_hparams_yaml_reads_as_none(tmp_path):
    path = tmp_path / "hparams.yaml"
    path.write_text("learning_rate: 0.001\nscheduler: !!python/object:foo.Bar {a: 1}\n")
    assert runs.read_yaml(path) == {"learning_rate": 0.001, "scheduler": None}
    assert runs.read_yaml(tmp_path / "missing.yaml") == {}
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    assert runs.read_yaml(tmp_path / "broken.yaml") == {}


def test_seed_order_is_numeric(tmp_path):
    logs = tmp_path / "logs"
    exp = logs / "full_lora"
    for version, seed in enumerate((10, 9, 100)):
        checkpoint = write_fit_run(logs, exp / f"version_{2 * version}", seed=seed)
        write_test_run(exp / f"version_{2 * version + 1}", IDS, scores(0.1), "x", checkpoint)
    assert runs.load_experiment(logs, "full_lora").seeds == [9, 10, 100]


def test_an_experiment_folder_without_version_folders_has_no_runs(tmp_path: Path):
    (tmp_path / "logs" / "baseline" / "notes").mkdir(parents=True)
    (tmp_path / "logs" / "baseline" / "notes" / "metrics.json").write_text("{}")
    assert runs.load_experiment(tmp_path / "logs", "baseline") is None
