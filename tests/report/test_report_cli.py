"""`main.py report` as users run it: after real `main.py test` runs on the tiny model, its --help, and its imports."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from main import main
from tests.helpers import REPO, cli_args
from tests.report.mdtables import section, table_row
from tests.report.runfolders import per_title, write_fit_events, write_fit_run, write_test_run
from titlegen.errors import run_main
from titlegen.report import command as report


def rows(run_dir: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, (run_dir / "predictions.jsonl").read_text().splitlines())}


def test_report_of_real_test_runs_on_the_tiny_model(tiny_model_dir, pairs_file, tmp_path):
    args = cli_args(tiny_model_dir, tmp_path, source=pairs_file, eval_batch_size=4, progress_bar=False)
    for config in ("baseline", "first_sentence"):  # neither needs a checkpoint
        main(["test", "--config", config, *args, "--trainer.limit_test_batches=2"])
    logs = tmp_path / "logs"
    out = tmp_path / "report"
    text = report.main(["--logs", str(logs), "--out", str(out)]).read_text()

    base, first = rows(logs / "baseline" / "version_0"), rows(logs / "first_sentence" / "version_0")
    assert base.keys() == first.keys() and len(base) >= 4
    summary = section(text, None)
    for name, titles in (("baseline", base), ("first_sentence", first)):
        row = table_row(summary, f"**{name}**")
        f1 = np.mean([r["bertscore_f1"] for r in titles.values()])
        assert row[1:3] == ["—", str(len(titles))] and row[3].startswith(f"{f1:.3f} [")
        assert row[10] == f"bootstrap over {len(titles)} titles"
    assert table_row(summary, "**first_sentence**")[9] == "—", "no stop rate without generation"

    diffs = np.array([base[i]["bertscore_f1"] - first[i]["bertscore_f1"] for i in sorted(base)])
    # Exact: with 2^n <= the default 9999 permutations, every sign assignment is counted once.
    flipped = np.array([np.mean(diffs * s) for s in itertools.product((1, -1), repeat=len(diffs))])
    p = np.mean(np.abs(flipped) >= abs(diffs.mean()) - 1e-12)
    pair = table_row(section(text, "Paired comparisons (BERTScore F1)"), "baseline − first_sentence")
    assert pair[1] == str(len(diffs)) and pair[4].startswith(f"{diffs.mean():+.3f} [") and pair[5] == f"{p:.2g}"
    assert table_row(summary, "**baseline**")[11].endswith(f"p={p:.2g} (n={len(diffs)})")

    settings = section(text, "Hyperparameters")
    assert table_row(settings, "**baseline**")[4] == "none" and table_row(settings, "**baseline**")[8] == "greedy"
    assert table_row(settings, "**first_sentence**")[8] == "first sentence"
    missing = section(text, "Missing")
    assert "**full_lora**" in missing and "**last_layer_lora**" in missing and "**baseline**" not in missing
    assert {"summary.md", "summary.json", "f1.png", "val_curves.png"} <= {p.name for p in out.iterdir()}


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    options = [a for a in report.build_parser()._actions if a.option_strings and a.dest != "help"]
    assert {o for a in options for o in a.option_strings} == {
        "--logs",
        "--out",
        "--experiments",
        "--sweep",
        "--bootstrap",
        "--permutations",
        "--seed",
        "--examples",
    }
    for action in options:
        assert action.option_strings[0] in text
        assert action.help and len(action.help) > 20, f"{action.option_strings[0]} needs a real description"
        assert " ".join(action.help.replace("%(default)s", str(action.default)).split()) in text


@pytest.mark.parametrize("bad", [["--bootstrap", "0"], ["--permutations", "0"], ["--examples", "-1"]])
def test_bad_counts_are_user_errors(bad, tmp_path, capsys):
    # Through main.py's entry point: one `error:` line, exit status 2, no traceback, nothing written.
    assert run_main(main, ["report", "--logs", str(tmp_path), "--out", str(tmp_path / "out"), *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad[0]} {bad[1]}") and "Fix:" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_main_py_report_needs_neither_unsloth_nor_lightning(tmp_path):
    logs = tmp_path / "logs"
    ids = [f"t{i}" for i in range(30)]
    fit = logs / "full_lora" / "version_0"
    checkpoint = write_fit_run(logs, fit, seed=1)
    write_fit_events(fit, 0.0, 60.0, [100.0], [1.0], {10: 0.3, 20: 0.4}, ".a")  # the event reader is loaded too
    write_test_run(logs / "full_lora" / "version_1", ids, per_title(ids, np.full(30, 0.6), 0), "t", checkpoint)
    write_test_run(logs / "first_sentence" / "version_0", ids, per_title(ids, np.full(30, 0.5), 1), "f", None)
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['main.py', 'report', '--logs', {str(logs)!r}, '--out', {str(tmp_path / 'out')!r}]\n"
        "try:\n    runpy.run_path('main.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('unsloth', 'lightning', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "LOADED []" in out.stdout, out.stderr[-2000:]
    assert "| full_lora − first_sentence | 30 |" in (tmp_path / "out" / "summary.md").read_text()
