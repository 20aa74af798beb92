"""Loading the base model in 4-bit through Unsloth, from a hub id, a directory, or a packaged GGUF file.

Unsloth is imported inside the function, so `--help`, config checks and the data pipeline run without it; `main.py`
(and the test suite) import it first when it is installed, as Unsloth requires.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch

from titlegen import perf
from titlegen.errors import ModelError
from titlegen.modelfiles import materialize

ComputeDtype = Literal["auto", "bfloat16", "float16"]

log = logging.getLogger(__name__)


def requested_dtype(compute_dtype: ComputeDtype, on_gpu: bool) -> torch.dtype | None:
    """The dtype asked of Unsloth's loader: None (`auto` on a GPU) lets it pick, bf16 or fp16 where the GPU lacks bf16.

    On the CPU fallback Unsloth would pick bf16 where the CPU has bf16 instructions (AVX512-BF16), fp32 elsewhere,
    and it swaps fp16 for bf16: fp32 always, so that a CPU run gives the same titles and losses on every machine (and
    batched greedy titles equal one-by-one ones).
    """
    if not on_gpu:
        if compute_dtype != "auto":
            log.warning(
                "model.compute_dtype=%s applies on a GPU only: without CUDA the model computes in float32.",
                compute_dtype,
            )
        return torch.float32
    return None if compute_dtype == "auto" else getattr(torch, compute_dtype)


def compute_dtype_of(model: Any) -> torch.dtype:
    """The dtype a loaded model computes in: Unsloth loads its unquantized weights (embeddings, norms) in it, and
    its 4-bit layers dequantize to it. After `auto`, this is where Unsloth's pick is read."""
    return model.get_input_embeddings().weight.dtype


def load_base_model(
    model_name: str,
    max_seq_length: int,
    device_map: Any = "sequential",
    trust_remote_code: bool = False,
    compute_dtype: ComputeDtype = "auto",
) -> Any:
    """Load the 4-bit base model through Unsloth, honouring the exact name or path given; `compute_dtype` applies
    on a GPU (`requested_dtype`)."""
    from unsloth import FastLanguageModel

    path = materialize(model_name)
    perf.keep_custom_op_aliasing_a_warning()  # before Unsloth compiles anything
    dtype = requested_dtype(compute_dtype, torch.cuda.is_available())
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
        raise ModelError(
            f"model.model_name={model_name!r}: could not load it from the Hugging Face hub or a local cache ({err})."
            " Fix: check the network, or run offline with `--config offline.yaml` (packaged models)."
        ) from err
    from transformers import GenerationConfig

    # Unsloth's loader sets max_length to the context size on a GPU; with the max_new_tokens that every generate()
    # call passes, transformers then warns at each call. A title's length is bounded by max_new_tokens alone.
    model.generation_config.max_length = GenerationConfig().max_length
    return model
