"""Text to tokens: the tokenizer's chat format (end-of-turn and pad tokens), prompts, title-only labels, truncation."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from titlegen.data.prompts import build_messages
from titlegen.errors import DataError, ModelError
from titlegen.modelfiles import materialize

IGNORE_INDEX = -100
_MARKER = "TITLEGEN_ANSWER_MARKER"
# Preferred pad tokens, in order, when the tokenizer has none or its pad would collide with end-of-turn/eos.
_PAD_CANDIDATES = ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "<unk>")


@dataclass(frozen=True)
class ChatTokens:
    """The ids that generation and label masking depend on."""

    end_of_turn_id: int
    pad_id: int


def chat_tokens(tokenizer: Any) -> ChatTokens:
    """Find end-of-turn from the chat template itself and choose a pad token distinct from it and from eos.

    The end-of-turn token is the first token the template writes after an assistant answer (`<|im_end|>` for
    ChatML, `<|eot_id|>` for Llama 3); tokenizers converted from GGUF can report a wrong eos, so it is not trusted.
    The tokenizer is updated in place: eos becomes end-of-turn, pad the chosen pad token.
    """
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARKER}], tokenize=False
    )
    after = rendered.split(_MARKER, 1)[1] if _MARKER in rendered else ""
    after_ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    end_of_turn_id = after_ids[0] if after_ids else tokenizer.eos_token_id
    if end_of_turn_id is None:
        raise ModelError(
            f"the tokenizer of {tokenizer.name_or_path!r}: its chat template ends an answer with no token and it has"
            " no eos token, so titles could not stop. Fix: use an instruct (chat) model's tokenizer."
        )
    taken = {end_of_turn_id, tokenizer.eos_token_id}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id not in taken | {None} else None
    if pad_id is None:
        vocab = tokenizer.get_vocab()
        candidates = [*_PAD_CANDIDATES, *tokenizer.all_special_tokens]
        pad_id = next((vocab[t] for t in candidates if t in vocab and vocab[t] not in taken), None)
    if pad_id is None:
        raise ModelError(
            f"the tokenizer of {tokenizer.name_or_path!r} has no pad token distinct from its end-of-turn and eos"
            " tokens. Fix: add one to the tokenizer (and resize the model's embeddings), or use another model."
        )
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(end_of_turn_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    return ChatTokens(end_of_turn_id=end_of_turn_id, pad_id=pad_id)


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_name: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer with pad/eos fixed by `chat_tokens`; cached, since data and module both need it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(materialize(model_name), trust_remote_code=trust_remote_code)
    chat_tokens(tokenizer)
    return tokenizer


def render_prompt(tokenizer: Any, abstract: str) -> str:
    return tokenizer.apply_chat_template(build_messages(abstract), tokenize=False, add_generation_prompt=True)


@dataclass
class Example:
    id: str
    prompt_ids: list[int]
    target_ids: list[int]  # title tokens + end-of-turn: the only supervised positions
    reference: str
    abstract: str
    truncated: bool


def encode_pairs(
    records: list[dict[str, str]], tokenizer: Any, max_seq_length: int, title_budget: int = 48
) -> list[Example]:
    """Tokenize prompts and titles; a prompt longer than `max_seq_length - title_budget` gets a shorter abstract.

    The cut depends on `title_budget`, not on the reference title, so a test prompt carries no hint of its answer
    and training and test prompts are cut alike. Titles are never cut: one longer than `title_budget` tokens (none
    in the arXiv data) shortens its own prompt further so that prompt + title still fit.
    """
    end_of_turn = chat_tokens(tokenizer).end_of_turn_id
    prompts = [render_prompt(tokenizer, r["abstract"]) for r in records]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    title_ids = tokenizer([r["title"] for r in records], add_special_tokens=False)["input_ids"]
    examples = []
    for record, prompt, title in zip(records, prompt_ids, title_ids, strict=True):
        target = [*title, end_of_turn]
        budget = max_seq_length - max(title_budget, len(target))
        truncated = len(prompt) > budget
        if truncated:
            prompt = _truncate_abstract(tokenizer, record, budget, max_seq_length)
        examples.append(Example(record["id"], prompt, target, record["title"], record["abstract"], truncated))
    return examples


def _truncate_abstract(tokenizer: Any, record: dict[str, str], budget: int, max_seq_length: int) -> list[int]:
    """The prompt with the abstract cut (at a token boundary) so that the prompt has at most `budget` tokens."""
    abstract = record["abstract"]
    offsets = tokenizer(abstract, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    keep = len(offsets)
    while keep > 0:
        prompt = tokenizer(render_prompt(tokenizer, abstract), add_special_tokens=False)["input_ids"]
        overflow = len(prompt) - budget
        if overflow <= 0:
            return prompt
        # Re-tokenizing the cut text can merge tokens differently, so cut and check until it fits.
        keep = max(0, keep - overflow)
        abstract = abstract[: offsets[keep - 1][1]] if keep else ""
    prompt = tokenizer(render_prompt(tokenizer, ""), add_special_tokens=False)["input_ids"]
    if len(prompt) > budget:
        raise DataError(
            f"sample {record['id']!r}: the prompt without abstract ({len(prompt)} tokens) leaves no room for the title"
            f" within max_seq_length={max_seq_length}. Fix: raise --data.max_seq_length."
        )
    return prompt
