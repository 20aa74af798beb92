"""Where an experiment's runs are: its version folders, their newest or last checkpoint, a run's log folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import yaml


def newest_checkpoint(
    save_dir: str | Path, experiment: str, model_name: str | None = None, pattern: str = "*.ckpt"
) -> Path | None:
    """The most recently written checkpoint of an experiment, or None.

    With `model_name`, only runs of that base model count (read from the run's hparams.yaml), so a SmolLM2 run
    under the same experiment name is never tested on Qwen. `pattern` narrows the file names (`last*.ckpt`).
    """
    found = sorted(Path(save_dir, experiment).glob(f"version_*/checkpoints/{pattern}"), key=lambda p: p.stat().st_mtime)
    if model_name is not None:
        found = [p for p in found if run_model_name(p.parents[1]) in (model_name, None)]
    return found[-1] if found else None


def run_model_name(run_dir: Path) -> str | None:
    """The base model a run folder's hparams.yaml names, or None where it has none."""
    hparams = run_dir / "hparams.yaml"
    if not hparams.is_file():
        return None
    return (yaml.safe_load(hparams.read_text()) or {}).get("model_name")


def logger_root(trainer_config: Any) -> tuple[Path, str] | None:
    """save_dir and name of the configured logger (a parsed, not yet instantiated, config), if it has them."""
    logger = trainer_config.get("logger")
    init_args = logger.get("init_args") if hasattr(logger, "get") else None
    if init_args is None or init_args.get("save_dir") is None:
        return None
    return Path(init_args.save_dir), str(init_args.get("name") or "")


def experiment_dir(trainer: L.Trainer) -> tuple[str, str]:
    """The save_dir and name of the trainer's logger: where its experiment's version folders are."""
    logger = trainer.logger
    return getattr(logger, "save_dir", None) or "lightning_logs", getattr(logger, "name", None) or ""


def run_seed() -> int:
    """The seed LightningCLI's `seed_everything` exported for this run (-1 where none was set)."""
    return int(os.environ.get("PL_GLOBAL_SEED", -1))


def run_dir(trainer: L.Trainer) -> Path:
    """The run's log folder ("." without a logger). Call it on every rank, before any rank-0-only work: under DDP
    `trainer.log_dir` is a broadcast from rank 0, so rank 0 alone asking waits forever for the others."""
    return Path(trainer.log_dir or ".")
