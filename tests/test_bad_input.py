"""Bad input fails before any model is loaded, naming the file:line (or option), the value and the fix.

Each case goes through the public boundary (`cli.main([...])` as `main.py` runs it, or the DataModule) with
`modeling.load_base_model` replaced by a tripwire: an error that came only after the model loaded fails the test.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from titlegen.cli import ConfigNotFound, main
from titlegen.data import TitleDataModule
from titlegen.modeling import ModelConfigError
from titlegen.splits import DataError

from .conftest import synthetic_pairs, write_jsonl

pytestmark = pytest.mark.usefixtures("no_model_load")  # every test: the error must come before the model loads


@pytest.fixture
def splits(tmp_path) -> dict[str, Path]:
    rows = synthetic_pairs(60)
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", rows[:40]),
        "validation": write_jsonl(tmp_path / "validation.jsonl", rows[40:50]),
        "test": write_jsonl(tmp_path / "test.jsonl", rows[50:]),
    }


def cli_args(model_dir: Path, tmp_path: Path, splits: dict[str, Path]) -> list[str]:
    return [
        f"--model.model_name={model_dir}",
        f"--data.train_file={splits['train']}",
        f"--data.validation_file={splits['validation']}",
        f"--data.test_file={splits['test']}",
        "--data.num_workers=0",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]


def fit(tiny_model_dir, tmp_path, splits, *extra: str) -> None:
    main(["fit", "--config", "full_lora.yaml", *cli_args(tiny_model_dir, tmp_path, splits), *extra])


def append_lines(path: Path, *lines: str | bytes) -> None:
    with open(path, "ab") as handle:
        for line in lines:
            handle.write((line if isinstance(line, bytes) else line.encode()) + b"\n")


# ----------------------------------------------------------------------------------------------- data files
def test_line_that_is_not_json(tiny_model_dir, tmp_path, splits):
    append_lines(splits["train"], '{"abstract": "cut off', '{"abstract": "a b c", "title": "fine"}')
    with pytest.raises(DataError) as info:
        fit(tiny_model_dir, tmp_path, splits)
    message = str(info.value)
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
def test_missing_empty_or_non_string_field(tiny_model_dir, tmp_path, splits, record, field, shown):
    append_lines(splits["validation"], json.dumps(record))
    where = re.escape(f"{splits['validation']}:11: field '{field}' must be a non-empty string, got ")
    with pytest.raises(DataError, match=where + shown + r"\nFix: correct or remove these lines"):
        fit(tiny_model_dir, tmp_path, splits)


def test_every_problem_of_every_file_in_one_error(tiny_model_dir, tmp_path, splits):
    append_lines(splits["train"], "not json", json.dumps({"abstract": "x"}), "[1, 2]")
    append_lines(splits["validation"], json.dumps({"title": "y"}))
    with pytest.raises(DataError) as info:
        fit(tiny_model_dir, tmp_path, splits)
    message = str(info.value)
    assert f"{splits['train']}: 3 problem(s)" in message and f"{splits['validation']}: 1 problem(s)" in message
    for where in (":41: not valid JSON", ":42: field 'title'", ":43: expected a JSON object, got list"):
        assert f"{splits['train']}{where}" in message
    assert f"{splits['validation']}:11: field 'abstract'" in message


def test_empty_file(tiny_model_dir, tmp_path, splits):
    splits["train"].write_text("\n\n")
    with pytest.raises(DataError, match=re.escape(f"{splits['train']}: the file holds no records. Fix: give a JSONL")):
        fit(tiny_model_dir, tmp_path, splits)


def test_file_that_is_not_utf8(tiny_model_dir, tmp_path, splits):
    append_lines(
        splits["train"], json.dumps({"abstract": "caf\u00e9", "title": "T"}, ensure_ascii=False).encode("latin-1")
    )
    with pytest.raises(DataError, match=re.escape(f"{splits['train']}:41: not UTF-8") + r".*Fix: re-encode the file"):
        fit(tiny_model_dir, tmp_path, splits)


def test_missing_data_path(tiny_model_dir, tmp_path, splits):
    missing = tmp_path / "nowhere" / "pairs.jsonl"
    with pytest.raises(DataError, match=re.escape(f"{missing}: no such file. Fix: pass an existing JSONL")):
        fit(tiny_model_dir, tmp_path, splits, "--data.train_file=null", f"--data.source={missing}")
    with pytest.raises(DataError, match=re.escape(f"data split 'train': {missing}: no such file")):
        fit(tiny_model_dir, tmp_path, splits, f"--data.train_file={missing}")


def test_only_the_files_of_the_stage_are_required(tiny_model_dir, tmp_path, splits):
    # `test` reads the test split alone: with a broken train file it gets as far as loading the model.
    append_lines(splits["train"], "not json")
    with pytest.raises(AssertionError, match="the model was loaded"):
        main(["test", "--config", "baseline.yaml", *cli_args(tiny_model_dir, tmp_path, splits)])
    with pytest.raises(DataError, match="not valid JSON"):
        fit(tiny_model_dir, tmp_path, splits)


def test_title_in_two_splits_is_a_warning(tiny_model_dir, splits, caplog):
    leaked = json.loads(splits["test"].read_text().splitlines()[3])
    append_lines(splits["train"], json.dumps({**leaked, "id": "dup-1", "title": leaked["title"].upper() + "!"}))
    dm = TitleDataModule(
        train_file=str(splits["train"]), validation_file=str(splits["validation"]), test_file=str(splits["test"]),
        model_name=str(tiny_model_dir), num_workers=0,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="titlegen.splits"):
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
    with pytest.raises(SystemExit) as info:
        fit(tiny_model_dir, tmp_path, splits, "--model.lora_scope=first")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'Parser key "model.lora_scope"' in err and "Given value: first" in err
    assert "Literal['none', 'all', 'last']" in err and "list[int]" in err  # the values that would do


def test_layer_index_out_of_range_for_the_model(tiny_model_dir, tmp_path, splits):
    with pytest.raises(
        ModelConfigError,
        match=re.escape("model.lora_scope=[0, 5]: layer indices [5] are out of range; this model has 2 decoder layers.")
        + r" Fix: use indices in 0\.\.1",
    ):
        fit(tiny_model_dir, tmp_path, splits, "--model.lora_scope=[0, 5]")


@pytest.mark.parametrize("rank", [0, -4])
def test_rank_not_positive(tiny_model_dir, tmp_path, splits, rank):
    with pytest.raises(ModelConfigError, match=rf"model.lora_r={rank}: the LoRA rank must be positive \(e.g. 16\)"):
        fit(tiny_model_dir, tmp_path, splits, f"--model.lora_r={rank}")


def test_option_problems_are_reported_together(tiny_model_dir, tmp_path, splits):
    with pytest.raises(ModelConfigError, match=r"lora_r=0.*\n.*learning_rate=-1.0"):
        fit(tiny_model_dir, tmp_path, splits, "--model.lora_r=0", "--model.learning_rate=-1")


@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_evaluating_a_lora_experiment_without_checkpoint(tiny_model_dir, tmp_path, splits, subcommand):
    with pytest.raises(
        SystemExit,
        match=rf"`{subcommand}` of LoRA scope 'last' needs a trained checkpoint, and .*last_layer_lora/version_\*/"
        r"checkpoints/ holds none .* Fix: run `fit` with this config first, or pass --ckpt_path PATH",
    ):
        main([subcommand, "--config", "last_layer_lora", *cli_args(tiny_model_dir, tmp_path, splits)])


def test_hub_model_with_no_network_and_no_local_copy(tmp_path, splits):
    # conftest runs the suite with HF_HUB_OFFLINE=1, as on a machine without network.
    with pytest.raises(
        ModelConfigError,
        match=r"model.model_name='no-such-org/no-such-model': not a local directory or file, and the Hugging Face hub"
        r" has no copy reachable from here, nor the local cache .* run offline with `--config offline.yaml`",
    ):
        fit("no-such-org/no-such-model", tmp_path, splits)


def test_model_path_that_does_not_exist(tmp_path, splits):
    with pytest.raises(ModelConfigError, match=re.escape(f"model.model_name='{tmp_path}/gone': no such directory")):
        fit(f"{tmp_path}/gone", tmp_path, splits)


def test_config_name_that_exists_nowhere(tiny_model_dir, tmp_path, splits):
    with pytest.raises(ConfigNotFound, match=r"--config 'fulll_lora': no such file, and none named so in .*configs\."):
        main(["fit", "--config", "fulll_lora", *cli_args(tiny_model_dir, tmp_path, splits)])
    with pytest.raises(ConfigNotFound, match=r"Fix: give a path, or one of: baseline.yaml, full_lora.yaml"):
        main(["fit", "--config=fulll_lora", *cli_args(tiny_model_dir, tmp_path, splits)])
