"""The LightningModule's option values checked before any data or model loads; every problem reported at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from titlegen.errors import OptionError


def check_module_options(hp: Mapping[str, Any]) -> None:
    """Raise one `OptionError` naming every impossible `model.*` value, with its range."""
    problems = []

    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            problems.append(f"model.{name}={hp[name]}: {rule}")

    need(hp["lora_r"] > 0, "lora_r", "the LoRA rank must be positive (e.g. 16)")
    need(hp["lora_alpha"] > 0, "lora_alpha", "must be positive (e.g. equal to lora_r)")
    need(0.0 <= hp["lora_dropout"] < 1.0, "lora_dropout", "must be in [0, 1)")
    need(hp["max_new_tokens"] > 0, "max_new_tokens", "must be positive (titles need ~20-40 tokens)")
    need(
        hp["val_generate_samples"] is None or hp["val_generate_samples"] > 0,
        "val_generate_samples",
        "must be positive or null (all); the default checkpoint callback monitors val/bertscore_f1, which needs"
        " generated titles",
    )
    need(hp["learning_rate"] > 0, "learning_rate", "must be positive (e.g. 2e-4)")
    need(hp["weight_decay"] >= 0, "weight_decay", "must be 0 or more")
    need(hp["warmup_steps"] >= 0, "warmup_steps", "must be 0 or more")
    need(hp["num_beams"] >= 2 or hp["generation"] != "beam", "num_beams", "beam search needs 2 beams or more")
    need(hp["temperature"] > 0, "temperature", "must be positive (e.g. 0.7)")
    need(0.0 < hp["top_p"] <= 1.0, "top_p", "must be in (0, 1]")
    need(hp["mbr_candidates"] >= 2 or hp["generation"] != "mbr", "mbr_candidates", "MBR needs 2 candidates or more")
    # jsonargparse checks these on the command line; a module built in Python (a notebook, a test) is checked here.
    graphs = hp.get("cuda_graphs", "auto")
    need(isinstance(graphs, bool) or graphs == "auto", "cuda_graphs", "must be auto, true or false")
    need(
        hp.get("compute_dtype", "auto") in ("auto", "bfloat16", "float16"),
        "compute_dtype",
        "must be auto, bfloat16 or float16",
    )
    if problems:
        raise OptionError("invalid model options:\n  " + "\n  ".join(problems))
