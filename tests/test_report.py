"""`main.py report` on hand-made run folders: newest test runs, bootstrap intervals, fit statistics, examples."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from main import main
from titlegen.report import command as report
from titlegen.report import runs

REPO = Path(__file__).resolve().parents[1]


def write_fit_events(run_dir: Path, start: float, seconds: float, tokens_per_sec: list[float], peak_gib: list[float],
                     val_f1: dict[int, float], suffix: str) -> None:  # fmt: skip
    """One process's event file, as a fit (or a resumed fit) writes it: trainable params first, then steps."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir), filename_suffix=suffix)
    writer.add_scalar("model/trainable_params", 1000.0, 0, walltime=start)
    for i, (tps, peak) in enumerate(zip(tokens_per_sec, peak_gib, strict=True)):
        writer.add_scalar("perf/tokens_per_sec", tps, 10 * i + 9, walltime=start + 10 * (i + 1))
        writer.add_scalar("perf/peak_memory_gib", peak, 10 * i + 9, walltime=start + 10 * (i + 1))
    for i, (step, f1) in enumerate(val_f1.items()):
        wall = start + seconds * (i + 1) / len(val_f1)
        writer.add_scalar("val/bertscore_f1", f1, step, walltime=wall)
        writer.add_scalar("val/loss", 3.0 - f1, step, walltime=wall)
    writer.close()


def write_test_run(run_dir: Path, scores: dict[str, np.ndarray], ids: list[str], title: str,
                   checkpoint: str | None, trainable: int, per_sample: tuple[str, ...] = ("precision", "recall", "f1")
                   ) -> None:  # fmt: skip
    run_dir.mkdir(parents=True)
    rows = []
    for i, sample_id in enumerate(ids):
        row = {"id": sample_id, "reference": f"reference {sample_id}", "generated": f"{title} {sample_id}",
               "abstract": f"abstract of {sample_id} " + "word " * 150}  # fmt: skip
        row.update({f"bertscore_{name}": float(scores[name][i]) for name in per_sample})
        rows.append(row)
    random.Random(0).shuffle(rows)  # the report must not depend on the file's order
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {f"test/bertscore_{name}": float(values.mean()) for name, values in scores.items()}
    summary = {"metrics": metrics, "samples": len(ids), "bertscore": {"hash": "minilm_L6"}, "model_name": "tiny",
               "trainable_params": trainable, "checkpoint": checkpoint}  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(summary))


def scores(seed: int, n: int, mean: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: np.clip(rng.normal(mean + shift, 0.1, n), 0, 1) for name, shift in
            (("precision", 0.02), ("recall", -0.02), ("f1", 0.0))}  # fmt: skip


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """baseline (an old and a newer test run), full_lora (a fit run and its test run), no last_layer_lora."""
    logs = tmp_path / "logs"
    base_ids = [f"s{i}" for i in range(200)]
    write_test_run(logs / "baseline" / "version_9", scores(1, 200, 0.2), base_ids, "old", None, 0)
    write_test_run(logs / "baseline" / "version_10", scores(2, 200, 0.4), base_ids, "zero-shot", None, 0)
    fit = logs / "full_lora" / "version_0"
    (fit / "checkpoints").mkdir(parents=True)
    (fit / "checkpoints" / "last.ckpt").write_bytes(b"")
    write_fit_events(fit, 1000.0, 425.0, [90.0, 100.0, 110.0], [1.5, 2.25, 2.0], {39: 0.5, 79: 0.6}, ".a")
    # Resumed an hour later in the same folder (`--ckpt_path last`): the pause is not training time.
    write_fit_events(fit, 5000.0, 100.0, [120.0], [2.0], {79: 0.65, 119: 0.7}, ".b")
    (fit / "adapter").mkdir()
    (fit / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 2_500_000)
    (fit / "adapter" / "adapter_config.json").write_text("{}")  # not a weight file: not counted
    # metrics.json names the checkpoint as seen from where `test` ran, not from the report's --logs.
    lora_ids = [f"s{i}" for i in range(5, 205)]
    write_test_run(logs / "full_lora" / "version_1", scores(3, 200, 0.6), lora_ids, "tuned",
                   "lightning_logs/full_lora/version_0/checkpoints/last.ckpt", 4096, per_sample=("f1",))  # fmt: skip
    return logs


def table_row(text: str, experiment: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| **{experiment}**"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_table_figures_missing_and_examples(logs, tmp_path):
    summary = report.main(["--logs", str(logs), "--out", str(tmp_path / "out"), "--bootstrap", "2000"])
    text = summary.read_text()

    base = table_row(text, "baseline")
    assert base[1] == "version_10", "the newest test run, by version number"
    values = scores(2, 200, 0.4)
    for cell, name in zip(base[3:6], runs.SCORES, strict=True):
        point, low, high = map(float, re.fullmatch(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", cell).groups())
        assert point == pytest.approx(values[name].mean(), abs=5e-4)
        # A bootstrap interval of a mean of 200 values is close to the normal one, mean +- 1.96 standard errors.
        half = 1.96 * values[name].std() / np.sqrt(200)
        assert low == pytest.approx(values[name].mean() - half, abs=0.006)
        assert high == pytest.approx(values[name].mean() + half, abs=0.006)
    assert base[6:] == ["0", "—", "—", "—", "—"]

    lora = table_row(text, "full_lora")
    assert lora[3].endswith("(no per-sample scores)") and lora[4].endswith("(no per-sample scores)")
    assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", lora[5])
    assert lora[6:] == ["4,096", "8 min 45 s", "105", "2.25 GiB", "2.5 MB"]  # 425 s + 100 s; mean of 4 windows
    curves = runs.load_run(logs, "full_lora", 10, 0).fit.curves
    # TensorBoard stores float32, hence approx; the resumed run's step 79 wins.
    assert curves["val/bertscore_f1"] == [(39, 0.5), (79, pytest.approx(0.65)), (119, pytest.approx(0.7))]
    assert curves["val/loss"] == [(39, 2.5), (79, pytest.approx(2.35)), (119, pytest.approx(2.3))]

    missing = text.split("## Missing", 1)[1].split("##", 1)[0]
    assert "**last_layer_lora**" in missing and "baseline" not in missing and "full_lora" not in missing
    for png in ("f1.png", "val_curves.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text

    blocks = text.split("## Examples", 1)[1].split("\n### ")[1:]
    assert len(blocks) == 5
    for block in blocks:
        sample_id = re.match(r"\d\. `(s\d+)`", block).group(1)
        assert 5 <= int(sample_id[1:]) < 200, "in both runs"
        assert f"> abstract of {sample_id} word" in block and block.count("word") < 150, "long abstracts are cut"
        assert f"| reference {sample_id} | zero-shot {sample_id} | tuned {sample_id} |" in block


def test_report_is_deterministic_and_the_seed_matters(logs, tmp_path):
    first = report.main(["--logs", str(logs), "--out", str(tmp_path / "a"), "--seed", "1"]).read_text()
    again = report.main(["--logs", str(logs), "--out", str(tmp_path / "b"), "--seed", "1"]).read_text()
    other = report.main(["--logs", str(logs), "--out", str(tmp_path / "c"), "--seed", "2"]).read_text()
    assert first.replace(str(tmp_path / "a"), "") == again.replace(str(tmp_path / "b"), "")
    ids = lambda text: re.findall(r"^### \d\. `(s\d+)`", text, flags=re.MULTILINE)  # noqa: E731
    assert len(ids(first)) == 5 and ids(first) != ids(other)
    rows = [json.loads(line) for line in (logs / "baseline" / "version_10" / "predictions.jsonl").open()]
    assert runs.bootstrap_intervals(rows, 1000, 1) != runs.bootstrap_intervals(rows, 1000, 2)


def test_bootstrap_interval_of_constant_scores_is_a_point():
    rows = [{"bertscore_precision": 0.5, "bertscore_recall": 0.25, "bertscore_f1": 0.75}] * 10
    assert runs.bootstrap_intervals(rows, 100, 0) == {"precision": (0.5, 0.5), "recall": (0.25, 0.25),
                                                        "f1": (0.75, 0.75)}  # fmt: skip


def test_no_runs_at_all_lists_every_experiment_as_missing(tmp_path):
    main(["report", "--logs", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])  # through the CLI
    text = (tmp_path / "out" / "summary.md").read_text()
    assert all(f"- **{name}**: no `test` results" in text for name in runs.EXPERIMENTS)
    assert "| experiment |" not in text and not (tmp_path / "out" / "f1.png").exists()


def test_main_py_report_needs_neither_unsloth_nor_lightning(logs, tmp_path):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['main.py', 'report', '--logs', {str(logs)!r}, '--out', {str(tmp_path / 'out')!r}]\n"
        "try:\n    runpy.run_path('main.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('unsloth', 'lightning', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "LOADED []" in out.stdout, out.stderr[-2000:]
    assert (tmp_path / "out" / "summary.md").is_file()
