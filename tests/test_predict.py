"""`main.py predict`: abstracts from JSONL or text in, a JSONL of titles out, the same titles `test` generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import REPO, cli_args, synthetic_pairs, write_jsonl
from titlegen.callbacks import TitleWriter
from titlegen.cli import main
from titlegen.data.records import read_abstracts
from titlegen.errors import CheckpointError, DataError, OptionError


@pytest.fixture
def run_args(peaky_model_dir: Path, pairs_file: Path, tmp_path: Path) -> list[str]:
    # Large random weights: greedy titles are varied words, not the empty answer of a near-uniform model.
    return cli_args(peaky_model_dir, tmp_path, source=pairs_file, eval_batch_size=2)


def test_read_abstracts_jsonl_and_text(tmp_path):
    rows = [{"id": "a", "abstract": "First abstract.", "title": "A title"}, {"abstract": "Second abstract."}]
    jsonl = write_jsonl(tmp_path / "in.jsonl", rows)
    assert read_abstracts(jsonl) == [
        {"id": "a", "abstract": "First abstract.", "title": "A title"},
        {"id": "in:2", "abstract": "Second abstract.", "title": ""},
    ]
    text = tmp_path / "in.txt"
    text.write_text("One abstract.\n\n  Another one, with {braces}.  \n")
    assert read_abstracts(text) == [
        {"id": "in:1", "abstract": "One abstract.", "title": ""},
        {"id": "in:3", "abstract": "Another one, with {braces}.", "title": ""},
    ]


def test_read_abstracts_reports_every_bad_line_at_once(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "x", "abstract": "ok"}\n'
        "an abstract in plain text\n"
        '{"abstract": ""}\n'
        '{"id": "x", "abstract": "again", "title": 7}\n'
        "[1, 2]\n"
    )
    with pytest.raises(DataError) as error:
        read_abstracts(bad)
    message = str(error.value)
    assert f"{bad}: 5 problem(s)" in message
    assert f"{bad}:2: not valid JSON" in message and "plain text needs a .txt file name" in message
    assert f"{bad}:3: field 'abstract' must be a non-empty string" in message
    assert f"{bad}:4: field 'title' (optional) must be a string, got 7" in message
    assert f"{bad}:4: id 'x' already used on line 1" in message
    assert f"{bad}:5: expected a JSON object, got list" in message
    with pytest.raises(DataError, match=r"data.predict_file='.*nope.txt': no such file"):
        read_abstracts(tmp_path / "nope.txt")


def test_writer_orders_rows_by_input_and_drops_the_index(tmp_path):
    rows = [{"id": f"r{i}", "title": f"t{i}", "stopped": i % 2 == 0, "index": i} for i in range(5)]
    batches = [[rows[3], rows[4]], [rows[0], rows[1], rows[2]], [rows[0]]]  # ranks' batches, a repeated sample
    trainer = SimpleNamespace(is_global_zero=True, log_dir=str(tmp_path / "run"))
    TitleWriter().write_on_epoch_end(trainer, None, batches, None)
    written = [json.loads(line) for line in (tmp_path / "run" / "titles.jsonl").read_text().splitlines()]
    assert written == [{k: v for k, v in row.items() if k != "index"} for row in rows]


def test_predict_writes_the_titles_test_generates(run_args, tmp_path):
    records = synthetic_pairs(5, seed=7)
    records[1].pop("title")  # a row without a reference
    records[3].pop("id")
    source = write_jsonl(tmp_path / "abstracts.jsonl", records)
    cli = main(["predict", "--config", "baseline.yaml", *run_args, f"--data.predict_file={source}"])
    out = Path(cli.trainer.log_dir) / "titles.jsonl"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["syn-0", "syn-1", "syn-2", "abstracts:4", "syn-4"]
    assert [r["abstract"] for r in rows] == [r["abstract"] for r in records]
    assert ["reference" in r for r in rows] == [True, False, True, True, True]
    assert rows[0]["reference"] == records[0]["title"]

    # The same abstracts as a test set (with references): `test` generates exactly these titles.
    with_titles = [
        {**r, "id": row["id"], "title": r.get("title", "x y z")} for r, row in zip(records, rows, strict=True)
    ]
    test_file = write_jsonl(tmp_path / "test.jsonl", with_titles)
    tested = main(["test", "--config", "baseline.yaml", *run_args, f"--data.test_file={test_file}"])
    generated = {
        json.loads(line)["id"]: json.loads(line)["generated"]
        for line in (Path(tested.trainer.log_dir) / "predictions.jsonl").read_text().splitlines()
    }
    assert [r["title"] for r in rows] == [generated[r["id"]] for r in rows]
    assert len({r["title"] for r in rows}) > 1, "titles that differ, so equal lists mean something"


def test_predict_errors_name_the_option(run_args, tmp_path):
    with pytest.raises(OptionError, match=r"data.predict_file is not set.*Fix: --data.predict_file"):
        main(["predict", "--config", "baseline.yaml", *run_args])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no abstract"}\n')
    with pytest.raises(DataError, match=rf"{bad}:1: field 'abstract'"):
        main(["predict", "--config", "baseline.yaml", *run_args, f"--data.predict_file={bad}"])
    with pytest.raises(CheckpointError, match="`predict` of LoRA scope 'all' needs a trained checkpoint"):
        main(["predict", "--config", "full_lora.yaml", *run_args, f"--data.predict_file={bad}"])


@pytest.mark.slow
def test_two_process_predict_writes_each_title_once_in_input_order(run_args, tmp_path):
    # Lightning's DDP launcher re-runs the command for rank 1, so this runs main.py as a command, not main([...]).
    records = synthetic_pairs(5, seed=11)  # odd: the ranks get 3 and 2 (Lightning's predict sampler does not repeat)
    source = write_jsonl(tmp_path / "abstracts.jsonl", records)
    single = main(["predict", "--config", "baseline.yaml", *run_args, f"--data.predict_file={source}"])
    expected = (Path(single.trainer.log_dir) / "titles.jsonl").read_text().splitlines()
    out = tmp_path / "two-ranks.jsonl"
    command = [
        sys.executable, str(REPO / "main.py"), "predict", "--config", "baseline.yaml", *run_args,
        f"--data.predict_file={source}", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        f"--prediction_writer.output={out}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr, "a second rank ran"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in records], "both ranks' titles, each once, in input order"
    # fp32 on the CPU: batching differs between one and two ranks, the greedy titles do not.
    assert out.read_text().splitlines() == expected
