"""`python main.py export`: a trained checkpoint as a PEFT adapter and as a merged model plain transformers loads."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from titlegen.errors import CheckpointError, OptionError

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py export",
        description="Export a trained checkpoint: adapter/ (PEFT format, for `peft.PeftModel.from_pretrained` on the"
        " 4-bit base) and merged/ (the dequantized base with the LoRA update added, for plain"
        " `transformers.AutoModelForCausalLM.from_pretrained`), each with the tokenizer.",
        epilog="Every other option (--config, --model.*, --data.*) is read as `fit` reads it; give the configs the"
        " checkpoint was trained with, e.g. `main.py export --config full_lora.yaml --config offline.yaml`.",
    )
    parser.add_argument(
        "--ckpt_path", help="checkpoint to export (default: the experiment's newest, as `test` takes it)"
    )
    parser.add_argument(
        "--out", help="folder for adapter/ and merged/ (default: export/<checkpoint name>/ in the checkpoint's run)"
    )
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="auto",
        help="merged weights' dtype; auto keeps the dtype the model computes in (bf16/fp16 on a GPU, fp32 on the CPU),"
        " which reproduces its titles exactly",
    )
    return parser


def main(args: list[str]) -> tuple[Path, Path]:
    """Run the export; returns the adapter and merged folders."""
    from titlegen.cli import main as cli_main
    from titlegen.model import merge
    from titlegen.runtime.preflight import check_checkpoint, check_model
    from titlegen.runtime.runs import experiment_dir, newest_checkpoint

    options, rest = build_parser().parse_known_args(args)
    cli = cli_main(rest, run=False)  # the experiment's model options, exactly as `fit` resolves them
    module = cli.model
    hp = module.hparams
    if hp.lora_scope == "none":
        raise OptionError(
            "export: LoRA scope 'none' (the baseline) trains nothing, so there is no adapter to export."
            f" Fix: use the base model {hp.model_name!r} itself, or export a LoRA experiment."
        )
    ckpt_path = options.ckpt_path
    if ckpt_path is None:
        save_dir, name = experiment_dir(cli.trainer)
        ckpt_path = newest_checkpoint(save_dir, name, hp.model_name)
        if ckpt_path is None:
            raise CheckpointError(
                f"export: {Path(save_dir, name)}/version_*/checkpoints/ holds no checkpoint for"
                f" {hp.model_name!r}. Fix: run `fit` with this config first, or pass --ckpt_path PATH."
            )
        rank_zero_info(f"Exporting the newest checkpoint of {name!r}: {ckpt_path}")
    ckpt_path = Path(ckpt_path)
    check_model(hp.model_name, hp.lora_scope, hp.trust_remote_code)
    checkpoint = check_checkpoint(str(ckpt_path))  # tensors and plain values only, or a clear refusal
    trained_on = checkpoint.get("hyper_parameters", {}).get("model_name")
    if trained_on not in (None, hp.model_name):
        raise CheckpointError(
            f"export: {ckpt_path} was trained on {trained_on!r}, but the config says model.model_name="
            f"{hp.model_name!r}. Fix: pass the configs it was trained with (e.g. --config offline.yaml)."
        )
    module.configure_model()
    module.on_load_checkpoint(checkpoint)  # refuses a checkpoint of another LoRA scope, naming the fix
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    module.model.eval()

    out = Path(options.out) if options.out else ckpt_path.parents[1] / "export" / ckpt_path.stem
    adapter = merge.save_adapter(module.model, out / "adapter")
    module.tokenizer.save_pretrained(adapter)  # the base's tokenizer, with titlegen's end-of-turn eos and pad
    merged = merge.export_merged(
        module.model, hp.model_name, module.tokenizer, out / "merged", DTYPES[options.dtype], hp.trust_remote_code
    )
    rank_zero_info(f"Exported {ckpt_path}:\n  PEFT adapter: {adapter}\n  merged model: {merged}")
    return adapter, merged
