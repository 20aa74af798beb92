"""Writing a trained model: the PEFT adapter, and a merged plain-transformers model that computes what the 4-bit
model with LoRA computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from titlegen import perf
from titlegen.errors import OptionError
from titlegen.modelfiles import materialize


def save_adapter(model: Any, directory: str | Path) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads."""
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory


def merged_linear_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The fp32 weight a linear layer computes with: its base weight (dequantized when 4-bit) plus the LoRA updates.

    The update of each active adapter is PEFT's own `get_delta_weight` (B @ A x alpha / r).
    """
    base = getattr(layer, "base_layer", layer)
    weight = base.weight
    if type(weight).__name__ == "Params4bit":
        import bitsandbytes as bnb

        # The same dequantization the 4-bit forward pass runs, so the merged weight is what the module multiplied by.
        merged = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    else:
        merged = weight.detach().float().clone()
    if hasattr(layer, "lora_A") and not getattr(layer, "disable_adapters", False):
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                merged += layer.get_delta_weight(adapter).float()
    return merged


def export_merged(
    model: Any,
    model_name: str,
    tokenizer: Any,
    directory: str | Path,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Write a plain transformers model (and the tokenizer) that computes what the 4-bit model with LoRA computes.

    The trained model multiplies by 4-bit weights dequantized on the fly, not by the original 16-bit weights, so
    adding the LoRA update to the original weights would give another model with other greedy titles. Here every
    projection is dequantized as the forward pass does it and the update is added in fp32; embeddings and norms are
    copied as loaded. Unsloth's `save_pretrained_merged(..., save_method="merged_16bit")` is not used: its CPU
    fallback refuses to merge into a 4-bit model (Unsloth 2026.10.9). The result loads with
    `AutoModelForCausalLM.from_pretrained`, with no Unsloth, PEFT or bitsandbytes.

    dtype: None keeps the dtype the model computes in (bf16 or fp16 on a GPU, fp32 on the CPU fallback), which
        reproduces its titles; torch.float16 or torch.bfloat16 makes a smaller copy on the CPU.
    """
    import copy

    from transformers import AutoConfig, AutoModelForCausalLM

    causal_lm = perf.unwrapped(model)
    dtype = dtype or causal_lm.get_input_embeddings().weight.dtype
    # The original config, not the loaded one: that one carries the 4-bit quantization_config (and Unsloth's notes).
    config = AutoConfig.from_pretrained(materialize(model_name), trust_remote_code=trust_remote_code)
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    sources = dict(causal_lm.named_modules())
    with torch.no_grad():
        for name, module in plain.named_modules():
            tensors = dict(module.named_parameters(recurse=False))
            saved_buffers = module.named_buffers(recurse=False)
            tensors.update((key, b) for key, b in saved_buffers if key not in module._non_persistent_buffers_set)
            if not tensors:
                continue
            source = sources.get(name)
            if source is None:
                raise OptionError(
                    f"export: {type(plain).__name__} has a module {name!r} that the trained model lacks: it was not"
                    f" built from {model_name!r}. Fix: export with the config the checkpoint was trained with."
                )
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(merged_linear_weight(source))
                if module.bias is not None:
                    module.bias.copy_(getattr(source, "base_layer", source).bias)
                continue
            for key, tensor in tensors.items():
                tensor.copy_(getattr(source, key))
    plain.generation_config = copy.deepcopy(causal_lm.generation_config)
    # Stop where titlegen stops (end of turn, made the eos by `tokenization.chat_tokens`) and pad as it pads.
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    directory = Path(directory)
    plain.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
