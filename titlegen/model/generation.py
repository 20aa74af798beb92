"""Titles from prompts: batched generation on left-padded prompts, stopping at the end-of-turn token."""

from __future__ import annotations

from typing import Any

import torch

from titlegen.model.lora import training_mode


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
