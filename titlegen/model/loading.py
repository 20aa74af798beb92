"""Loading the base model in 4-bit through Unsloth, from a hub id, a directory, or a packaged GGUF file.

Unsloth is imported inside the function, so `--help`, config checks and the data pipeline run without it; `main.py`
(and the test suite) import it first when it is installed, as Unsloth requires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from titlegen import perf
from titlegen.errors import ModelError
from titlegen.modelfiles import materialize


def load_base_model(
    model_name: str,
    max_seq_length: int,
    device_map: Any = "sequential",
    trust_remote_code: bool = False,
) -> Any:
    """Load the 4-bit base model through Unsloth, honouring the exact name or path given."""
    from unsloth import FastLanguageModel

    path = materialize(model_name)
    perf.keep_custom_op_aliasing_a_warning()  # before Unsloth compiles anything
    # On a GPU Unsloth picks bf16, or fp16 on a T4. On the CPU fallback it picks bf16 where the CPU has bf16
    # instructions (AVX512-BF16), fp32 elsewhere: fp32 always, so that a CPU run
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
        raise ModelError(
            f"model.model_name={model_name!r}: could not load it from the Hugging Face hub or a local cache ({err})."
            " Fix: check the network, or run offline with `--config offline.yaml` (packaged models)."
        ) from err
    return model
