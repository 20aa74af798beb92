"""Safe loading: checkpoints are plain tensors and values, loading one runs no code, remote code is opt-in."""

from __future__ import annotations

import importlib.metadata
import inspect
import pickle
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers import REPO, cli_args, synthetic_pairs, write_jsonl
from titlegen import cli
from titlegen.cli import main
from titlegen.data.datamodule import TitleDataModule
from titlegen.data.tokenization import load_tokenizer
from titlegen.errors import CheckpointError, OptionError
from titlegen.module import TitleGenModule

PLAIN = (str, int, float, bool, type(None))


def run_args(model_dir: Path, root: Path) -> list[str]:
    return [
        "--config", "full_lora.yaml",
        *cli_args(model_dir, root, "--trainer.num_sanity_val_steps=0", source=root / "pairs.jsonl", fast_eval=False,
                  batch_size=4, eval_batch_size=4, progress_bar=False),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A run folder and the last.ckpt that `fit` wrote in it (2 steps, no validation)."""
    root = tmp_path_factory.mktemp("safe-loading")
    write_jsonl(root / "pairs.jsonl", synthetic_pairs(120))
    main(["fit", *run_args(tiny_model_dir, root), "--trainer.max_steps=2", "--trainer.limit_val_batches=0"])
    return root, root / "logs/full_lora/version_0/checkpoints/last.ckpt"


class RunsCodeWhenLoaded:
    """Unpickling this object creates a file: the proof that loading executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def evil_checkpoint(fitted_ckpt: Path, tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    checkpoint = torch.load(fitted_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["lora_r"] = RunsCodeWhenLoaded(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def plain_values(value, where: str = "") -> list[str]:
    """Paths inside `value` that hold anything but plain Python values."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in plain_values(k, where) + plain_values(v, f"{where}/{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in plain_values(v, f"{where}[{i}]")]
    return [] if isinstance(value, PLAIN) else [f"{where}: {type(value).__name__}"]


def test_fit_checkpoint_is_plain_tensors_and_plain_values(fitted):
    _, last = fitted
    checkpoint = torch.load(last, weights_only=True)  # raises on any pickled class
    assert checkpoint["global_step"] == 2
    for key in ("hyper_parameters", "datamodule_hyper_parameters", "TitleDataModule", "loops"):
        assert plain_values(checkpoint[key]) == [], key
    assert checkpoint["hyper_parameters"]["trust_remote_code"] is False
    assert "hparams_type" not in checkpoint and "datamodule_hparams_type" not in checkpoint  # no class to rebuild
    assert checkpoint["state_dict"] and all(isinstance(t, torch.Tensor) for t in checkpoint["state_dict"].values())
    assert all("lora_" in name for name in checkpoint["state_dict"])  # the adapter only, no pickled module


def test_checkpoint_with_a_pickled_object_is_refused(tiny_model_dir, fitted, tmp_path, no_model_load):
    root, last = fitted
    evil, marker = evil_checkpoint(last, tmp_path)
    with pytest.raises(pickle.UnpicklingError):  # what plain torch.load(weights_only=False) would have run
        torch.load(evil, weights_only=True)
    with pytest.raises(
        CheckpointError,
        match=rf"--ckpt_path {evil}: refused, it holds pickled Python objects that loading would have to run"
        r" \(.*\)\. titlegen loads only plain tensors and values, so a checkpoint cannot execute code\. Fix: use a"
        r" checkpoint written by `main.py fit`",
    ):
        main(["test", *run_args(tiny_model_dir, root), "--ckpt_path", str(evil)])
    assert not marker.exists()


def test_lightning_itself_loads_weights_only(tiny_model_dir, fitted, tmp_path, monkeypatch):
    # Behind the preflight check, Lightning's own load also refuses: the CLI passes weights_only=True to it.
    root, last = fitted
    evil, marker = evil_checkpoint(last, tmp_path)
    monkeypatch.setattr(cli, "check_checkpoint", lambda path: None)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        main(["test", *run_args(tiny_model_dir, root), "--ckpt_path", str(evil)])
    assert not marker.exists()


def test_weights_only_false_is_refused(tiny_model_dir, fitted):
    root, last = fitted
    with pytest.raises(OptionError, match=r"--weights_only=false: titlegen loads checkpoints as plain tensors"):
        main(["test", *run_args(tiny_model_dir, root), "--ckpt_path", str(last), "--weights_only=false"])


def test_truncated_checkpoint_is_a_clear_error(tiny_model_dir, fitted, tmp_path):
    root, last = fitted
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(last.read_bytes()[:1000])  # what a save cut short by a full disk leaves
    with pytest.raises(
        CheckpointError, match=rf"--ckpt_path {cut}: not a readable checkpoint \(.*\); a save cut short \(disk full"
    ):
        main(["test", *run_args(tiny_model_dir, root), "--ckpt_path", str(cut)])


# ----------------------------------------------------------------------------------------------- remote code
@pytest.mark.parametrize("cls", [TitleGenModule, TitleDataModule])
def test_trust_remote_code_defaults_off(cls):
    assert inspect.signature(cls.__init__).parameters["trust_remote_code"].default is False


@pytest.mark.parametrize("option", [[], ["--model.trust_remote_code=true"]])
def test_trust_remote_code_reaches_every_loader(tiny_model_dir, tmp_path, monkeypatch, option):
    import transformers
    import unsloth

    seen: dict[str, list[bool]] = {"config": [], "tokenizer": [], "model": []}

    def spy(kind, original):
        def from_pretrained(*args, **kwargs):
            seen[kind].append(kwargs.get("trust_remote_code", False))
            return original(*args, **kwargs)

        return from_pretrained

    class Stop(Exception):
        pass

    def model_loader(*args, **kwargs):
        seen["model"].append(kwargs.get("trust_remote_code", False))
        raise Stop

    monkeypatch.setattr(
        transformers.AutoConfig, "from_pretrained", spy("config", transformers.AutoConfig.from_pretrained)
    )
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", spy("tokenizer", transformers.AutoTokenizer.from_pretrained)
    )
    monkeypatch.setattr(unsloth.FastLanguageModel, "from_pretrained", model_loader)
    load_tokenizer.cache_clear()
    write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(60))
    with pytest.raises(Stop):
        main(["fit", *run_args(tiny_model_dir, tmp_path), *option])
    expected = bool(option)
    assert seen["config"] and seen["tokenizer"] and seen["model"]
    assert set(seen["config"]) == set(seen["tokenizer"]) == set(seen["model"]) == {expected}, seen
    load_tokenizer.cache_clear()


# ----------------------------------------------------------------------------------------------- dependencies
def lightning_requirement() -> Requirement:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        from pip._vendor import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "lightning"]
    assert len(found) == 1, project["dependencies"]
    return found[0]


@pytest.mark.parametrize(
    ("version", "allowed"),
    [("2.6.2", False), ("2.6.3", False), ("2.6.5", False), ("2.5.0", False), ("2.0.0", False), ("2.6.6", True),
     ("2.6.7", True)],
)  # fmt: skip
def test_lightning_requirement_excludes_compromised_and_unsafe_releases(version, allowed):
    assert lightning_requirement().specifier.contains(Version(version), prereleases=True) is allowed


def test_installed_lightning_satisfies_the_requirement():
    installed = importlib.metadata.version("lightning")
    assert lightning_requirement().specifier.contains(Version(installed), prereleases=True), installed
