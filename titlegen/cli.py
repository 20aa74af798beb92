"""LightningCLI for titlegen: bare config names resolve to configs/, linked options, run-folder conventions."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from titlegen.callbacks import AdapterExport, SampleTitles, Throughput
from titlegen.data import TitleDataModule
from titlegen.module import TitleGenModule

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigNotFound(SystemExit):
    pass


def resolve_config_args(args: list[str]) -> list[str]:
    """`--config full_lora.yaml` (or `full_lora`) also finds configs/full_lora.yaml; an unknown name is an error."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = _find_config(resolved[i + 1])
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + _find_config(arg.split("=", 1)[1])
    return resolved


def _find_config(name: str) -> str:
    if Path(name).is_file() or name.lstrip().startswith(("{", "[")):
        return name
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml", Path("configs") / name):
        if candidate.is_file():
            return str(candidate)
    available = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigNotFound(
        f"error: --config {name!r}: no such file, and none named so in {CONFIG_DIR}. Fix: give a path, or one of:"
        f" {available}"
    )


def newest_checkpoint(save_dir: str | Path, experiment: str, model_name: str | None = None) -> Path | None:
    """The most recently written checkpoint of an experiment, or None.

    With `model_name`, only runs of that base model count (read from the run's hparams.yaml), so a SmolLM2 run
    under the same experiment name is never tested on Qwen.
    """
    found = sorted(Path(save_dir, experiment).glob("version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    if model_name is not None:
        found = [p for p in found if _run_model_name(p.parents[1]) in (model_name, None)]
    return found[-1] if found else None


def _run_model_name(run_dir: Path) -> str | None:
    hparams = run_dir / "hparams.yaml"
    if not hparams.is_file():
        return None
    return (yaml.safe_load(hparams.read_text()) or {}).get("model_name")


class TitleGenCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse's parser type)
        # Values that must agree between data and model are set once and linked, not repeated in every config.
        parser.link_arguments("model.model_name", "data.model_name")
        parser.link_arguments("data.max_seq_length", "model.max_seq_length")
        parser.link_arguments("model.max_new_tokens", "data.max_new_tokens")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/bertscore_f1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "step{step}-f1{val/bertscore_f1:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(AdapterExport, "adapter_export")
        parser.add_lightning_class_args(SampleTitles, "sample_titles")
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs", "name": "titlegen", "default_hp_metric": False},
                },
                "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}],
                # One pass over ~18k training pairs (about 2,250 steps at batch 8) is enough for titles.
                "trainer.max_epochs": 1,
                # A fraction, so that any training file size works: 4 validations per epoch.
                "trainer.val_check_interval": 0.25,
                "trainer.log_every_n_steps": 10,
                "trainer.gradient_clip_val": 1.0,
            }
        )

    def before_test(self) -> None:
        self._default_to_newest_checkpoint("test")

    def before_validate(self) -> None:
        self._default_to_newest_checkpoint("validate")

    def _default_to_newest_checkpoint(self, subcommand: str) -> None:
        """Evaluating a LoRA experiment without `--ckpt_path` takes its newest checkpoint, and says which."""
        config = self.config_init[subcommand]
        if config.get("ckpt_path") or self.model.hparams.lora_scope == "none":
            return
        logger = self.trainer.logger
        save_dir = getattr(logger, "save_dir", None) or "lightning_logs"
        name = getattr(logger, "name", None) or ""
        found = newest_checkpoint(save_dir, name, self.model.hparams.model_name)
        if found is None:
            raise SystemExit(
                f"error: `{subcommand}` of LoRA scope {self.model.hparams.lora_scope!r} needs a trained checkpoint, and"
                f" {Path(save_dir, name)}/version_*/checkpoints/ holds none for {self.model.hparams.model_name!r}."
                " Fix: run `fit` with this config first,"
                " or pass --ckpt_path PATH."
            )
        rank_zero_info(f"Evaluating the newest checkpoint of {name!r}: {found}")
        config["ckpt_path"] = str(found)


def main(args: list[str] | None = None, run: bool = True) -> TitleGenCLI:
    """Entry point; tests call it with an argument list, as `main.py` calls it with sys.argv."""
    if args is None:
        # Rewrite argv in place: LightningCLI warns when given both `args` and command-line arguments.
        sys.argv[1:] = resolve_config_args(sys.argv[1:])
    else:
        args = resolve_config_args(args)
    return TitleGenCLI(
        TitleGenModule,
        TitleDataModule,
        args=args,
        run=run,
        seed_everything_default=3407,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": False},
    )
