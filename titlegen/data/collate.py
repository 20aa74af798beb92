"""Token batches: right-padded for training (with the flat positions of the title labels), left-padded prompts for
generation."""

from __future__ import annotations

from typing import Any

import torch

from titlegen.data.tokenization import IGNORE_INDEX, Example


def flat_label_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices (row * width + t) of the positions t whose next token is a label (t + 1 is not -100)."""
    rows, columns = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows * labels.shape[1] + columns  # no integer matmul: CUDA has none


class Collator:
    """Pads a list of `Example`s. Training inputs are right-padded; generation prompts are left-padded."""

    def __init__(
        self, pad_id: int, for_generation: bool, pad_to_multiple_of: int = 1, max_length: int | None = None
    ) -> None:
        self.pad_id = pad_id
        self.for_generation = for_generation
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length  # rounding up never pads past this (the model's max_seq_length)

    def __call__(self, items: list[tuple[int, Example]]) -> dict[str, Any]:
        sequences = [ex.prompt_ids + ex.target_ids for _, ex in items]
        longest = max(map(len, sequences))
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        if self.max_length is not None:
            width = max(longest, min(width, self.max_length))
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, ((_, ex), seq) in enumerate(zip(items, sequences, strict=True)):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, len(ex.prompt_ids) : len(seq)] = torch.tensor(ex.target_ids)
            attention_mask[row, : len(seq)] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        # Flat indices of the hidden states that predict a label (position t predicts t + 1), found here on the CPU
        # so that the loss can pick them on the GPU without waiting for it (a boolean mask would sync every step).
        batch["label_positions"] = flat_label_positions(labels)
        if self.for_generation:
            batch.update(left_pad([ex.prompt_ids for _, ex in items], self.pad_id))
            batch["ids"] = [ex.id for _, ex in items]
            batch["references"] = [ex.reference for _, ex in items]
            batch["abstracts"] = [ex.abstract for _, ex in items]
            batch["index"] = torch.tensor([index for index, _ in items], dtype=torch.long)
        return batch


def left_pad(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left padding puts every prompt's last token in the last column, where generation continues."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return {"prompt_ids": ids, "prompt_attention_mask": mask}


class IndexedDataset(torch.utils.data.Dataset):
    """Examples with their position in the split, so evaluation can cap generation at the first N samples."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[int, Example]:
        return index, self.examples[index]
