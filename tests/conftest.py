"""Fixtures and hooks only: the tiny models (each built once per session), small JSONL splits, the model-load
tripwire, and the skips of the `gpu` and `shared_data` markers. Builders the tests share are in `tests/helpers.py`."""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable
from pathlib import Path

# Unsloth patches transformers/peft/trl at import and insists on coming first; no network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if importlib.util.find_spec("unsloth") is not None:
    import unsloth  # noqa: F401

import pytest
import torch

from tests import helpers

# Set by `.ci/run`: a test marked `shared_data` fails, not skips, where the shared arXiv pairs are missing.
REQUIRE_SHARED = "TITLEGEN_REQUIRE_SHARED"


# ----------------------------------------------------------------------------------------------- markers
def require_shared_pairs() -> Path:
    """The shared arXiv pairs; where they are missing, skip the test (fail it under `TITLEGEN_REQUIRE_SHARED=1`)."""
    if not helpers.SHARED_PAIRS.is_file():
        message = f"{helpers.SHARED_PAIRS} is missing: this test needs the shared arXiv pairs beside the checkout"
        if os.environ.get(REQUIRE_SHARED) == "1":
            pytest.fail(f"{message} ({REQUIRE_SHARED}=1: CI must run it)", pytrace=False)
        pytest.skip(message)
    return helpers.SHARED_PAIRS


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    gpu = item.get_closest_marker("gpu")
    if gpu is not None:
        needed = int(gpu.kwargs.get("count", 1))
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found < needed:
            why = gpu.kwargs.get("reason", "run it on a machine with CUDA")
            pytest.skip(f"needs {needed} CUDA GPU(s), this machine has {found}: {why}")
    if item.get_closest_marker("shared_data") is not None:
        require_shared_pairs()


@pytest.fixture(scope="session")
def shared_pairs() -> Path:
    """`../shared/datasets/arxiv/pairs.jsonl`, for tests marked `shared_data` (skipped where it is missing)."""
    return require_shared_pairs()


# ----------------------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`tiny_models(**options)`: the directory of `helpers.build_tiny_model(dir, **options)`, built once a session."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(helpers.build_tiny_model).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    built: dict[tuple, Path] = {}

    def tiny_model(**options: object) -> Path:
        unknown = set(options) - set(defaults)
        assert not unknown, f"build_tiny_model has no options {sorted(unknown)}"
        key = tuple(sorted({**defaults, **options}.items()))
        if key not in built:
            name = "tiny-" + "-".join(f"{k}{v}" for k, v in sorted(options.items()))
            built[key] = helpers.build_tiny_model(tmp_path_factory.mktemp(name), **options)
        return built[key]

    return tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models: Callable[..., Path]) -> Path:
    """Qwen2, 2 layers, hidden 64, MLP 128."""
    return tiny_models(arch="qwen2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_models: Callable[..., Path]) -> Path:
    """Llama, 3 layers."""
    return tiny_models(arch="llama", layers=3)


@pytest.fixture(scope="session")
def peaky_model_dir(tiny_models: Callable[..., Path]) -> Path:
    """The Qwen2 tiny model with large random weights (initializer_range 0.5): greedy choices depend on the context
    and on the adapter, so titles are varied words (not one repeated token) and "same predictions" means something."""
    return tiny_models(arch="qwen2", initializer_range=0.5)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from titlegen.data.tokenization import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def trained(peaky_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One `fit` of full_lora on a tiny model with large random weights (greedy titles then depend on the adapter):
    its module, the options that point a command at it (model, data, logs), its run folder and its model."""
    from titlegen.cli import main

    root = tmp_path_factory.mktemp("trained")
    args = helpers.cli_args(
        peaky_model_dir,
        root,
        "--model.learning_rate=0.05",  # a few steps move the adapter far enough to change greedy titles
        "--model.warmup_steps=0",
        source=helpers.write_jsonl(root / "pairs.jsonl", helpers.synthetic_pairs(120)),
        batch_size=4,
        eval_batch_size=4,
        progress_bar=False,
    )
    train = ["--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.limit_val_batches=1"]
    fit = main(["fit", "--config", "full_lora.yaml", *args, *train])
    return {"module": fit.model, "args": args, "run_dir": Path(fit.trainer.log_dir), "model_dir": peaky_model_dir}


# ----------------------------------------------------------------------------------------------- data, tripwires
@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    return helpers.write_jsonl(tmp_path / "pairs.jsonl", helpers.synthetic_pairs(120))


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the model loader with a tripwire: a problem reported only after the model loaded fails the test."""
    from titlegen.model import loading

    def tripwire(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was reported")

    monkeypatch.setattr(loading, "load_base_model", tripwire)
