"""LoRA scope to decoder layers, validated once; adapters through Unsloth's PEFT wrapper; the training state.

`none` freezes everything (the zero-shot baseline), `all` adapts every decoder layer, `last` the last one, and a
list of indices those layers (PEFT's `layers_to_transform`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from titlegen import perf
from titlegen.errors import OptionError

LoraScope = Literal["none", "all", "last"] | list[int]
Checkpointing = Literal["offload", "gpu", "unsloth"] | bool
_LEAN_CHECKPOINT_FLAG = "_titlegen_lean_checkpoint"  # set by apply_lora, read by training_mode
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
        raise OptionError(
            f"model.lora_scope={scope!r} is not a scope. Fix: use none, all, last, or a list of layer indices."
        )
    bad = [i for i in scope if not isinstance(i, int) or not 0 <= i < num_layers]
    if bad or not scope:
        raise OptionError(
            f"model.lora_scope={list(scope)!r}: layer indices {bad or '[] (empty)'} are out of range; this model has"
            f" {num_layers} decoder layers. Fix: use indices in 0..{num_layers - 1}, or `last` / `all`."
        )
    return sorted(set(scope))


def check_target_modules(model: Any, target_modules: Sequence[str]) -> None:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in present]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if "Linear" in type(m).__name__})
        raise OptionError(
            f"model.target_modules: {missing} not found in {type(model).__name__}. Fix: choose from {linear}."
        )


def apply_lora(
    model: Any,
    scope: LoraScope,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    gradient_checkpointing: Checkpointing,
    seed: int,
) -> Any:
    """Wrap the base in LoRA adapters for the scope; with scope `none` freeze everything (zero-shot baseline).

    `gradient_checkpointing`: `offload` or `gpu` (titlegen's `LeanCheckpoint`, installed by `training_mode`, with
    the layer inputs in pinned host memory or kept on the GPU), `unsloth` (Unsloth's own offloaded checkpoint), True
    (torch's, inputs kept on the GPU) or False.
    """
    if r <= 0:
        raise OptionError(f"model.lora_r={r}: the LoRA rank must be positive. Fix: e.g. --model.lora_r 16.")
    layers = scope_layers(scope, decoder_layer_count(model))
    check_target_modules(model, target_modules)
    if layers == []:
        for param in model.parameters():
            param.requires_grad_(False)
        return model
    from unsloth import FastLanguageModel

    lean = gradient_checkpointing in perf.LEAN_CHECKPOINTS
    peft_model = FastLanguageModel.get_peft_model(
        model,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        layers_to_transform=layers,
        bias="none",
        # Unsloth arms the layers for its offloaded checkpoint; `training_mode` swaps in the lean one.
        use_gradient_checkpointing="unsloth"
        if gradient_checkpointing in perf.LEAN_CHECKPOINTS
        else gradient_checkpointing,
        random_state=seed,
    )
    if lean:
        peft_model.__dict__[_LEAN_CHECKPOINT_FLAG] = gradient_checkpointing
    perf.prepare_model(peft_model)
    return peft_model


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_module_names(model: torch.nn.Module) -> list[str]:
    """Names of modules that carry a LoRA adapter (for tests and logs)."""
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]


def training_mode(model: Any) -> None:
    """Undo `for_inference` (Unsloth's fast-generation state) so training gets gradients and checkpointing back."""
    from unsloth import FastLanguageModel

    FastLanguageModel.for_training(model)
    perf.prepare_for_training(model, model.__dict__.get(_LEAN_CHECKPOINT_FLAG))
