"""LightningCLI for titlegen: bare config names resolve to configs/, linked options, run-folder conventions."""

from __future__ import annotations

import re
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from titlegen.callbacks import AdapterExport, SampleTitles, Throughput, TitleWriter
from titlegen.data.datamodule import TitleDataModule
from titlegen.errors import CheckpointError, OptionError
from titlegen.module import TitleGenModule
from titlegen.runtime.checkpoint_options import EVALUATING, evaluation_options
from titlegen.runtime.preflight import MIN_FREE_BYTES, check_checkpoint, check_model, check_writable
from titlegen.runtime.progress import use_steps_progress_bar
from titlegen.runtime.runs import experiment_dir, logger_root, newest_checkpoint, run_dir
from titlegen.runtime.stopping import GracefulStop, NonFiniteLossGuard, TrainingInterrupted
from titlegen.runtime.summary import fit_summary, test_summary

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# --ckpt_path values that Lightning itself resolves (titlegen resolves `last` first, see _resolve_last_checkpoint).
LIGHTNING_CKPT_NAMES = ("best", "last", "hpc", "registry")
SUBCOMMANDS = ("fit", "validate", "test", "predict")


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
    raise OptionError(
        f"--config {name!r}: no such file, and none named so in {CONFIG_DIR}. Fix: give a path, or one of: {available}"
    )


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
        parser.add_lightning_class_args(TitleWriter, "prediction_writer")
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs", "name": "titlegen", "default_hp_metric": False},
                },
                "trainer.callbacks": [
                    {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
                    {"class_path": "titlegen.callbacks.HyperparameterMetrics"},
                ],
                # One pass over ~18k training pairs (about 560 steps at batch 32) is enough for titles.
                "trainer.max_epochs": 1,
                # A fraction, so that any training file size works: 4 validations per epoch.
                "trainer.val_check_interval": 0.25,
                "trainer.log_every_n_steps": 10,
                "trainer.gradient_clip_val": 1.0,
            }
        )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads --ckpt_path's hyperparameters right after parsing: resolve `last` and check the file
        # before that, so that a bad checkpoint is refused with a clear message and `last` works like a path.
        self._checked_ckpt: str | None = None
        self._resolve_last_checkpoint()
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_NAMES:
            check_checkpoint(str(ckpt_path))
            self._checked_ckpt = str(ckpt_path)
        # Lightning merges the checkpoint's hyperparameters in next: keep what was given, for the options it must
        # not decide (titlegen.runtime.checkpoint_options).
        self._given_model = self.config[subcommand].model.clone() if subcommand in EVALUATING and ckpt_path else None

    def before_instantiate_classes(self) -> None:
        subcommand = self.config.get("subcommand")
        if self._given_model is not None:  # an evaluation of a --ckpt_path checkpoint
            config = self.config[subcommand]
            options, notes = evaluation_options(self._given_model, config.model, str(config.ckpt_path))
            for note in notes:
                rank_zero_info(note)
            # Parsed back over the merge as Lightning parsed the checkpoint's in, so that linked options follow.
            self.config = self.parser.parse_object({subcommand: {"model": options}}, self.config)
        # Before the module, the data and the Trainer are built: the model's name must be loadable (a path, a GGUF
        # file, a hub id or its cache) and its LoRA layers must exist. Reads the model's config, no weights.
        if subcommand:  # not for `run=False` (parsing only; `main.py export` checks before it loads)
            model = self.config[subcommand].model
            check_model(model.model_name, model.lora_scope, model.trust_remote_code)

    def before_fit(self) -> None:
        self._preflight("fit")

    def after_fit(self) -> None:
        log_dir = run_dir(self.trainer)  # on every rank (a broadcast under DDP)
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, log_dir), flush=True)

    def after_test(self) -> None:
        log_dir = run_dir(self.trainer)
        if self.trainer.is_global_zero:
            print(test_summary(self.trainer, log_dir), flush=True)

    def fit(self, model: TitleGenModule, **kwargs: Any) -> None:
        try:
            self.trainer.fit(model, **kwargs)
        except SIGTERMException as err:
            # Lightning stopped a validation on the signal; GracefulStop saved the state. Exit non-zero, say how.
            stop = next((c for c in self.trainer.callbacks if isinstance(c, GracefulStop)), GracefulStop())
            raise TrainingInterrupted(stop.message(self.trainer)) from err

    def before_test(self) -> None:
        self._default_to_newest_checkpoint("test")
        self._preflight("test")

    def before_validate(self) -> None:
        self._default_to_newest_checkpoint("validate")
        self._preflight("validate")

    def before_predict(self) -> None:
        self._default_to_newest_checkpoint("predict")
        self._preflight("predict")

    def _resolve_last_checkpoint(self) -> None:
        """`--ckpt_path last` means this experiment's newest last.ckpt of this base model, in any version folder.

        Lightning's own `last` looks only in the new run's folder, so a resume would silently start over. `fit`
        also goes on logging (and checkpointing) in the version folder it resumes, so one run keeps one folder.
        """
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is None or config.get("ckpt_path") != "last":
            return
        root = logger_root(config.trainer)
        save_dir, name = root if root else (Path(config.trainer.default_root_dir or "."), "lightning_logs")
        model_name = config.model.model_name
        found = newest_checkpoint(save_dir, name, model_name, pattern="last*.ckpt")
        if found is None:
            raise CheckpointError(
                f"--ckpt_path last: {Path(save_dir, name)}/version_*/checkpoints/ holds no last.ckpt of"
                f" {model_name!r}, so there is nothing to resume. Fix: run without --ckpt_path to start training,"
                " or pass --ckpt_path PATH to a checkpoint (and the same --config and --trainer.logger options as"
                " the run that wrote it)."
            )
        rank_zero_info(f"Resuming from {found}")
        config.ckpt_path = str(found)
        if subcommand == "fit" and root is not None:
            config.trainer.logger.init_args.version = found.parents[1].name
            # Expected when resuming there, so not worth ModelCheckpoint's warning.
            warnings.filterwarnings("ignore", message=f"Checkpoint directory {re.escape(str(found.parent))} exists")

    def _preflight(self, subcommand: str) -> None:
        """Checks that need nothing loaded: the log folder and the checkpoint's safety. And the progress bar's total."""
        use_steps_progress_bar(self.trainer)
        config = self.config_init[subcommand]
        if config.get("weights_only") is False:
            raise OptionError(
                "--weights_only=false: titlegen loads checkpoints as plain tensors and values only, so that"
                " loading one never runs code. Fix: drop the option; titlegen's checkpoints need nothing else."
            )
        if "weights_only" in config:
            config["weights_only"] = True  # also where Lightning loads it, whatever torch's default becomes
        logger = self.trainer.logger
        save_dir = getattr(logger, "save_dir", None)
        if save_dir:
            log_root = Path(save_dir, getattr(logger, "name", None) or "")
            option = "--trainer.logger.init_args.save_dir"
        else:
            log_root, option = Path(self.trainer.default_root_dir), "--trainer.default_root_dir"
        check_writable(log_root, option, MIN_FREE_BYTES if subcommand == "fit" else 0)
        ckpt_dir = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        if subcommand == "fit" and ckpt_dir:
            check_writable(Path(ckpt_dir), "--checkpoint.dirpath", MIN_FREE_BYTES)
        ckpt_path = config.get("ckpt_path")  # also the newest checkpoint that `test` takes by default
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_NAMES and str(ckpt_path) != self._checked_ckpt:
            check_checkpoint(str(ckpt_path))

    def _default_to_newest_checkpoint(self, subcommand: str) -> None:
        """Evaluating a LoRA experiment without `--ckpt_path` takes its newest checkpoint, and says which."""
        config = self.config_init[subcommand]
        if config.get("ckpt_path") or self.model.hparams.lora_scope == "none":
            return
        save_dir, name = experiment_dir(self.trainer)
        found = newest_checkpoint(save_dir, name, self.model.hparams.model_name)
        if found is None:
            raise CheckpointError(
                f"`{subcommand}` of LoRA scope {self.model.hparams.lora_scope!r} needs a trained checkpoint, and"
                f" {Path(save_dir, name)}/version_*/checkpoints/ holds none for {self.model.hparams.model_name!r}."
                " Fix: run `fit` with this config first,"
                " or pass --ckpt_path PATH."
            )
        rank_zero_info(f"Evaluating the newest checkpoint of {name!r}: {found}")
        config["ckpt_path"] = str(found)


def main(args: list[str], run: bool = True) -> TitleGenCLI:
    """`fit`, `validate`, `test` and `predict` with `args` as on the command line (`main.py` passes its own)."""
    with warnings.catch_warnings():
        # LightningCLI warns when given an argument list while sys.argv holds arguments too; `main.py` passes the
        # command line itself, with config names resolved, so the two never disagree.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended", category=UserWarning)
        try:
            return TitleGenCLI(
                TitleGenModule,
                TitleDataModule,
                args=resolve_config_args(args),
                run=run,
                seed_everything_default=3407,
                # Always on, whatever a config's callbacks list says: stop cleanly on a signal or a non-finite loss.
                trainer_defaults={"callbacks": [GracefulStop(), NonFiniteLossGuard()]},
                save_config_kwargs={"overwrite": True},
                # Parse errors are raised, not printed with the usage: `main.py` prints each user error one way.
                parser_kwargs={"default_env": False, "exit_on_error": False},
            )
        except ArgumentError as err:
            command = next((a for a in args if a in SUBCOMMANDS), None)
            where = f"python main.py {command} --help" if command else "python main.py --help"
            raise OptionError(f"{err}\nFix: see `{where}` for the options and the values they take.") from err
