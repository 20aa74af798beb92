"""The report at its edges: a resumed fit's statistics, logs with no runs, and run files that cannot be read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from main import main
from tests.report.mdtables import section, table_row
from tests.report.runfolders import per_title, write_fit_events, write_fit_run, write_test_run
from titlegen.errors import DataError, run_main
from titlegen.report import command as report
from titlegen.report import runs

IDS = [f"s{i}" for i in range(20)]


def run_report(logs, out):
    return report.main(["--logs", str(logs), "--out", str(out), "--permutations", "99"]).read_text()


def test_a_resumed_fit_counts_its_training_time_without_the_pause(tmp_path):
    logs = tmp_path / "logs"
    fit = logs / "full_lora" / "version_0"
    checkpoint = write_fit_run(logs, fit, seed=0)
    write_fit_events(fit, 1000.0, 425.0, [90.0, 100.0, 110.0], [1.5, 2.25, 2.0], {39: 0.5, 79: 0.6}, ".a")
    # Resumed an hour later in the same folder (`--ckpt_path last`): the pause is not training time.
    write_fit_events(fit, 5000.0, 100.0, [120.0], [2.0], {79: 0.65, 119: 0.7}, ".b")
    (fit / "adapter").mkdir()
    (fit / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 2_500_000)
    (fit / "adapter" / "adapter_config.json").write_text("{}")  # not a weight file: not counted
    write_test_run(logs / "full_lora" / "version_1", IDS, per_title(IDS, np.full(20, 0.6), 0), "t", checkpoint, 4096)
    text = run_report(logs, tmp_path / "out")
    # 425 s + 100 s; the mean of 4 windows; the last validation is the resumed run's step 119.
    expected = ["1", "8 min 45 s", "105", "2.25 GiB", "2.5 MB", "0.700"]
    assert table_row(section(text, "Fit statistics"), "**full_lora**")[1:] == expected
    curves = runs.load_experiment(logs, "full_lora").runs[0].fit.stats.curves
    # TensorBoard stores float32, hence approx; the resumed run's step 79 wins.
    assert curves["val/bertscore_f1"] == [(39, 0.5), (79, pytest.approx(0.65)), (119, pytest.approx(0.7))]
    assert curves["val/loss"] == [(39, 2.5), (79, pytest.approx(2.35)), (119, pytest.approx(2.3))]
    missing = section(text, "Missing")
    assert all(f"**{name}**" in missing for name in ("baseline", "first_sentence", "last_layer_lora"))
    assert "full_lora" not in missing and "## Paired comparisons" not in text, "nothing to compare with"


def test_no_runs_at_all_lists_every_experiment_as_missing(tmp_path):
    main(["report", "--logs", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])  # through the CLI
    text = (tmp_path / "out" / "summary.md").read_text()
    assert all(f"- **{name}**: no `test` results" in text for name in runs.EXPERIMENTS)
    assert len(runs.EXPERIMENTS) == 4 and "first_sentence" in runs.EXPERIMENTS
    assert "| experiment |" not in text and not (tmp_path / "out" / "f1.png").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["experiments"] == {}


def test_unreadable_run_files_are_user_errors_naming_the_file(tmp_path, capsys):
    logs = tmp_path / "logs"
    write_test_run(logs / "baseline" / "version_0", IDS, per_title(IDS, np.full(20, 0.5), 0), "b", None)
    predictions = logs / "baseline" / "version_0" / "predictions.jsonl"
    lines = predictions.read_text().splitlines()
    predictions.write_text("\n".join([*lines[:2], '{"id": "s99", "bertscore_f1"', *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"predictions.jsonl:3: not valid JSON"):
        run_report(logs, tmp_path / "out")
    (logs / "baseline" / "version_0" / "metrics.json").write_text('{"metrics": ')
    with pytest.raises(DataError, match=r"version_0/metrics.json: not valid JSON.*Fix: run `main.py test`"):
        run_report(logs, tmp_path / "out")
    assert run_main(main, ["report", "--logs", str(logs), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
