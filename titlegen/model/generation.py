"""Titles from prompts: batched generation on left-padded prompts, stopping at the end-of-turn token.

Four decodings (`Decoding.strategy`): greedy; beam search; sampling; and minimum-Bayes-risk selection, which samples
`candidates` titles per abstract and keeps the one most similar, on average, to the others. MBR's similarity is the
cosine between the generating model's own mean-pooled last hidden states of the candidates: a utility encoder that
is not the evaluation encoder (BERTScore's), so that the selection does not optimise the metric it is judged by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from titlegen import perf
from titlegen.model.lora import training_mode

Strategy = Literal["greedy", "beam", "sample", "mbr"]


@dataclass(frozen=True)
class Decoding:
    """How titles are generated; `options()` gives the matching `generate()` keyword arguments."""

    strategy: Strategy = "greedy"
    num_beams: int = 4
    length_penalty: float = 1.0
    temperature: float = 0.7
    top_p: float = 0.95
    candidates: int = 8

    def options(self) -> dict[str, Any]:
        # Every option set, whatever the checkpoint's generation_config says: transformers fills unset options from
        # it, and Qwen2.5-Instruct ships sampling settings and repetition_penalty=1.05, which would also penalise the
        # pad tokens of left-padded rows.
        common = {"repetition_penalty": 1.0, "top_k": None, "num_return_sequences": 1}
        if self.strategy == "greedy":
            return {**common, "do_sample": False, "num_beams": 1, "temperature": None, "top_p": None}
        if self.strategy == "beam":
            return {**common, "do_sample": False, "num_beams": self.num_beams, "length_penalty": self.length_penalty,
                    "early_stopping": True, "temperature": None, "top_p": None}  # fmt: skip
        sampled = {**common, "do_sample": True, "num_beams": 1, "temperature": self.temperature, "top_p": self.top_p}
        if self.strategy == "mbr":
            sampled["num_return_sequences"] = self.candidates
        return sampled


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    end_of_turn_id: int,
    pad_id: int,
    decoding: Decoding = Decoding(),  # noqa: B008 (frozen)
) -> list[list[int]]:
    """The new tokens of each row's title (through end-of-turn when it stopped), one title per prompt."""
    from unsloth import FastLanguageModel

    was_training = model.training
    FastLanguageModel.for_inference(model)
    try:
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=end_of_turn_id,
            pad_token_id=pad_id,
            use_cache=True,
            **decoding.options(),
        )
        new = [_until_end(row, end_of_turn_id) for row in out[:, prompt_ids.shape[1] :].tolist()]
        if decoding.strategy == "mbr":
            new = _minimum_bayes_risk(model, new, decoding.candidates, end_of_turn_id, pad_id)
    finally:
        if was_training:
            training_mode(model)
    return new


def _until_end(row: list[int], end_of_turn_id: int) -> list[int]:
    return row[: row.index(end_of_turn_id) + 1] if end_of_turn_id in row else row


def _minimum_bayes_risk(
    model: Any, candidates: list[list[int]], per_prompt: int, end_of_turn_id: int, pad_id: int
) -> list[list[int]]:
    """Of each prompt's `per_prompt` consecutive candidates, the one with the highest mean similarity to the rest."""
    titles = [[t for t in c if t != end_of_turn_id] for c in candidates]
    width = max(1, max(map(len, titles)))
    device = next(model.parameters()).device
    ids = torch.full((len(titles), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, title in enumerate(titles):
        ids[row, : len(title)] = torch.tensor(title, dtype=torch.long)
        mask[row, : len(title)] = 1
    hidden = perf.hidden_states(model, ids, mask).float()
    counts = mask.sum(1, keepdim=True)
    pooled = (hidden * mask[..., None]).sum(1) / counts.clamp(min=1)
    picks = mbr_choice(pooled.view(-1, per_prompt, pooled.shape[-1]), (counts > 0).view(-1, per_prompt))
    return [candidates[group * per_prompt + pick] for group, pick in enumerate(picks.tolist())]


def mbr_choice(embeddings: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """For each group of candidate embeddings (groups, n, dim), the index of the valid candidate whose mean cosine
    similarity to the group's other valid candidates is highest (the first valid one when it has no peer)."""
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    pair = valid[:, :, None] & valid[:, None, :]
    pair &= ~torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
    utility = (similarity * pair).sum(-1) / pair.sum(-1).clamp(min=1)
    utility = utility.masked_fill(~valid, float("-inf"))
    return utility.argmax(-1)
