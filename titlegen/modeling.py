"""The only module that touches Unsloth and PEFT: load the 4-bit base, apply the LoRA scope, generate, save.

Unsloth is imported inside the functions that need it, so `--help`, config checks and the data pipeline run
without it; `main.py` (and the test suite) import it first when it is installed, as Unsloth requires.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch._functorch.config as functorch_config

from titlegen import prefix, stepgraph
from titlegen.gguf import materialize
from titlegen.losses import head_cross_entropy

# torch 2.14 checks, on the first call of each compiled graph, that custom ops do not alias their inputs, and turns
# a violation into an error only when $CI is set. It flags inductor's own `alloc_from_pool` (which returns a view
# of its memory pool by design) in the attention-mask builder that Unsloth compiles, so the same run would fail
# under CI and merely warn elsewhere. Keep it a warning everywhere.
functorch_config.error_on_custom_op_aliasing = False

LoraScope = Literal["none", "all", "last"] | list[int]
Checkpointing = Literal["offload", "gpu", "unsloth"] | bool
_LEAN_CHECKPOINT_FLAG = "_titlegen_lean_checkpoint"  # set by apply_lora, read by training_mode
LEAN_CHECKPOINTS = ("offload", "gpu")  # the `gradient_checkpointing` modes that `LeanCheckpoint` runs
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModelConfigError(ValueError):
    """A model option that does not fit the loaded model; the message names the option, the value and the fix."""


# ----------------------------------------------------------------------------------------------- loading
def load_base_model(
    model_name: str,
    max_seq_length: int,
    device_map: Any = "sequential",
    trust_remote_code: bool = False,
) -> Any:
    """Load the 4-bit base model through Unsloth, honouring the exact name or path given."""
    from unsloth import FastLanguageModel

    path = materialize(model_name)
    # On a GPU Unsloth picks bf16, or fp16 on a T4. On the CPU fallback it picks bf16 where the CPU has bf16
    # instructions (AVX512-BF16, as on the 2026-11-26 dev machine), fp32 elsewhere: fp32 always, so that a CPU run
    # gives the same titles and losses on every machine (and batched greedy titles equal one-by-one ones).
    dtype = None if torch.cuda.is_available() else torch.float32
    try:
        model, _ = FastLanguageModel.from_pretrained(
            model_name=path,
            max_seq_length=max_seq_length,
            dtype=dtype,
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
    gradient_checkpointing: Checkpointing,
    seed: int,
) -> Any:
    """Wrap the base in LoRA adapters for the scope; with scope `none` freeze everything (zero-shot baseline).

    `gradient_checkpointing`: `offload` or `gpu` (titlegen's `LeanCheckpoint`, installed by `training_mode`, with
    the layer inputs in pinned host memory or kept on the GPU), `unsloth` (Unsloth's own offloaded checkpoint), True
    (torch's, inputs kept on the GPU) or False.
    """
    if r <= 0:
        raise ModelConfigError(f"model.lora_r={r}: the LoRA rank must be positive. Fix: e.g. --model.lora_r 16.")
    layers = scope_layers(scope, decoder_layer_count(model))
    check_target_modules(model, target_modules)
    if layers == []:
        for param in model.parameters():
            param.requires_grad_(False)
        return model
    from unsloth import FastLanguageModel

    peft_model = FastLanguageModel.get_peft_model(
        model,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        layers_to_transform=layers,
        bias="none",
        # Unsloth arms the layers for its offloaded checkpoint; `training_mode` swaps in the lean one.
        use_gradient_checkpointing="unsloth" if gradient_checkpointing in LEAN_CHECKPOINTS else gradient_checkpointing,
        random_state=seed,
    )
    if gradient_checkpointing in LEAN_CHECKPOINTS:
        peft_model.__dict__[_LEAN_CHECKPOINT_FLAG] = gradient_checkpointing
    run_lora_mlp_eagerly(peft_model)
    return peft_model


def run_lora_mlp_eagerly(model: Any) -> int:
    """Take Unsloth's fused LoRA MLP out of its compiled decoder blocks, so that its backward works in place.

    Unsloth compiles each decoder layer as one torch.compile region, and on torch >= 2.11 traces its fused LoRA MLP
    (`fast_lora.LoRA_MLP`) into it. Traced, the SwiGLU backward's in-place Triton kernel is functionalized: it
    writes three new [batch, seq, intermediate] tensors next to the two the forward saved and the gradient of h.
    Those six (152 MiB each at batch 32 x 512 on Qwen2.5-0.5B) are the peak of a training step. Run eagerly, the
    kernel overwrites the forward's tensors instead. The MLP's input is not overwritten (`inplace=False`): the
    compiled part of the block may have saved it for its own backward. Returns the number of MLPs changed (none on
    the CPU, where Unsloth does not fuse the MLP).
    """
    from unsloth.kernels import fast_lora

    changed = 0
    for layer in unwrapped(model).model.layers:
        forward = layer.mlp.__dict__.get("forward")
        if getattr(forward, "__func__", None) is not fast_lora.apply_lora_mlp_swiglu:
            continue
        eager = torch._dynamo.disable(functools.partial(fast_lora.apply_lora_mlp_swiglu, inplace=False))
        # Unsloth's later checks (`_fused_lora_modules`, its FSDP decline) find fused MLPs by `forward.__func__.func`.
        eager.func = fast_lora.apply_lora_mlp_swiglu
        layer.mlp.forward = types.MethodType(eager, layer.mlp)
        changed += 1
    return changed


def unwrapped(model: Any) -> Any:
    """The transformers CausalLM inside a PEFT wrapper (or the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_module_names(model: torch.nn.Module) -> list[str]:
    """Names of modules that carry a LoRA adapter (for tests and logs)."""
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]


# ----------------------------------------------------------------------------------------------- training loss
def causal_lm_loss(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    label_positions: torch.Tensor | None = None,
    cuda_graphs: bool = False,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions, as `model(..., labels=labels).loss` computes it.

    Three shortcuts make it cheaper than the model's own loss, with the same value and gradients:
    - the LM head (151,936 x 896 on Qwen2.5-0.5B, a quarter of the model's FLOPs per token) and the softmax run only
      where a label exists: the title, under a tenth of each sequence, instead of every prompt position;
    - decoder layers below the first adapted one run without autograd when they have nothing to train (LoRA on the
      last layer only), so the backward pass starts at that layer instead of crossing every frozen layer;
    - with `cuda_graphs`, in training on a GPU, the whole step, backward included, replays as a CUDA graph per batch
      shape (`stepgraph`); shapes seen once, and the rest, replay the frozen layers as graphs (`prefix`).

    `label_positions` (from `data.Collator`): flat indices into the (batch * length) hidden states of the positions
    whose next token is a label; computed from `labels` when not given.
    """
    from unsloth.models.llama import resolve_logit_transforms

    causal_lm = unwrapped(model)
    if any(resolve_logit_transforms(causal_lm.config)):
        # Logit softcapping or scaling (Gemma 2, Cohere, Granite, ...) lives inside the model's own loss: use it
        # rather than copy it. Unsloth's own table decides, so the two cannot disagree on which models need it.
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    if label_positions is None:
        label_positions = flat_label_positions(labels)
    targets = labels.reshape(-1).index_select(0, label_positions + 1)
    if cuda_graphs and input_ids.is_cuda and torch.is_grad_enabled() and causal_lm.training:
        runner = stepgraph.runner_of(causal_lm)
        if runner is not None:
            body = functools.partial(title_loss, causal_lm, cuda_graphs=False)  # no graphs inside the graph
            loss = runner(causal_lm, body, input_ids, attention_mask, label_positions, targets)
            if loss is not None:
                return loss
    return title_loss(causal_lm, input_ids, attention_mask, label_positions, targets, cuda_graphs=cuda_graphs)


def title_loss(
    causal_lm: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    cuda_graphs: bool = False,
) -> torch.Tensor:
    """The (weighted) mean cross-entropy of `targets` at the flat hidden-state `positions` (`causal_lm_loss`'s body).

    `cuda_graphs`: replay the frozen layers below the first adapted one as CUDA graphs (`prefix.GraphedPrefix`).
    """
    backbone = causal_lm.model
    # CausalLM.forward sets this for its backbone; with labels, Unsloth treats the batch as right-padded training.
    backbone._has_no_labels = False
    first = prefix.first_trainable_layer(backbone) if torch.is_grad_enabled() and backbone.training else 0
    with prefix.frozen_prefix(backbone, first, cuda_graphs):
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    return head_cross_entropy(picked, causal_lm.lm_head, targets, weights)


def flat_label_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices (row * width + t) of the positions t whose next token is a label (t + 1 is not -100)."""
    rows, columns = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    return rows * labels.shape[1] + columns  # no integer matmul: CUDA has none


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
    causal_lm = unwrapped(model)
    # Captured graphs hold weight addresses; a fit or a validation may have moved or re-patched the model since.
    causal_lm.model.__dict__.pop(prefix.GRAPHS_ATTRIBUTE, None)
    if mode := model.__dict__.get(_LEAN_CHECKPOINT_FLAG):
        use_lean_checkpointing(model, offload=mode == "offload")


def use_lean_checkpointing(model: Any, offload: bool = True) -> None:
    """Swap Unsloth's offloaded checkpoint for `checkpointing.LeanCheckpoint`, which does the same with less Python.

    `training_mode` calls it for `gradient_checkpointing` `offload` and `gpu` (`offload=False`: every layer keeps its
    input on the GPU), and only layers that checkpoint are touched. The last checkpointed layer keeps its input on
    the GPU: backward needs it again at once. RNG state is replayed only when a LoRA or attention dropout draws
    random numbers.
    """
    from titlegen.checkpointing import LeanCheckpoint, draws_random_numbers

    causal_lm = unwrapped(model)
    layers = [layer for layer in causal_lm.model.layers if getattr(layer, "gradient_checkpointing", False)]
    dropout = draws_random_numbers(causal_lm.config, layers)
    for index, layer in enumerate(layers):
        layer._gradient_checkpointing_func = LeanCheckpoint(
            offload=offload and index < len(layers) - 1, preserve_rng=dropout
        )


# ----------------------------------------------------------------------------------------------- saving
def save_adapter(model: Any, directory: str | Path) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads."""
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------------------------- exporting
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

    causal_lm = unwrapped(model)
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
                raise ModelConfigError(
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
