"""Tokenization: the chat format's end-of-turn and pad tokens, prompt/title encoding, abstract truncation."""

from __future__ import annotations

import pytest

from tests.helpers import ASSISTANT_HEADER, MAX_LEN, build_tokenizer, synthetic_pairs
from titlegen.data.tokenization import chat_tokens, encode_pairs, render_prompt
from titlegen.errors import DataError, ModelError


def test_chat_tokens_tiny_tokenizer(tiny_tokenizer):
    tokens = chat_tokens(tiny_tokenizer)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokens.end_of_turn_id == im_end
    assert tokens.pad_id == tiny_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokens.pad_id != tokens.end_of_turn_id
    assert tokens.pad_id != tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.eos_token_id == im_end
    assert tiny_tokenizer.pad_token_id == tokens.pad_id


def test_chat_tokens_without_pad_token_picks_endoftext():
    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    tokens = chat_tokens(tokenizer)
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokens.pad_id == endoftext
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokens.end_of_turn_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_chat_tokens_replaces_a_pad_equal_to_end_of_turn():
    tokenizer = build_tokenizer()
    tokenizer.pad_token = "<|im_end|>"
    tokens = chat_tokens(tokenizer)
    assert tokens.end_of_turn_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokens.pad_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.pad_token == "<|endoftext|>"


def test_chat_tokens_end_of_turn_comes_from_the_template_not_eos():
    tokenizer = build_tokenizer()
    tokenizer.eos_token = "<|im_start|>"  # a wrong eos, as tokenizers converted from GGUF can report
    tokens = chat_tokens(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokens.end_of_turn_id == im_end
    assert tokenizer.eos_token_id == im_end
    assert tokens.pad_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_chat_tokens_without_any_free_pad_token():
    tokenizer = build_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"  # wrong eos and end-of-turn together take both candidates
    tokenizer.pad_token = "<|im_end|>"
    with pytest.raises(ModelError, match="has no pad token distinct from its end-of-turn and eos tokens. Fix:"):
        chat_tokens(tokenizer)


def test_encode_pairs_prompt_and_target(tiny_tokenizer):
    records = synthetic_pairs(3)
    eot = chat_tokens(tiny_tokenizer).end_of_turn_id
    examples = encode_pairs(records, tiny_tokenizer, max_seq_length=1024)
    assert [ex.id for ex in examples] == [r["id"] for r in records]
    for ex, record in zip(examples, records, strict=True):
        assert not ex.truncated
        assert ex.reference == record["title"]
        assert ex.abstract == record["abstract"]
        assert ex.target_ids[-1] == eot
        assert eot not in ex.target_ids[:-1]
        assert tiny_tokenizer.decode(ex.target_ids[:-1]) == record["title"]
        expected_prompt = tiny_tokenizer(render_prompt(tiny_tokenizer, record["abstract"]), add_special_tokens=False)
        assert ex.prompt_ids == expected_prompt["input_ids"]
        prompt_text = tiny_tokenizer.decode(ex.prompt_ids)
        assert prompt_text.endswith(ASSISTANT_HEADER)
        assert record["abstract"] in prompt_text


def test_truncation_shortens_the_abstract_but_never_the_title(tiny_tokenizer):
    record = {"id": "long", "title": "Sparse Convex Estimators On Random Graphs", "abstract": ""}
    record["abstract"] = " ".join(synthetic_pairs(1, seed=3)[0]["abstract"] for _ in range(4))
    short = {"id": "short", "title": "Quantum Spin Lattice", "abstract": "model data."}
    full = encode_pairs([record], tiny_tokenizer, max_seq_length=4096)[0]
    assert not full.truncated
    assert len(full.prompt_ids) + len(full.target_ids) > MAX_LEN

    long_ex, short_ex = encode_pairs([record, short], tiny_tokenizer, max_seq_length=MAX_LEN)
    assert long_ex.truncated
    assert len(long_ex.prompt_ids) + len(long_ex.target_ids) <= MAX_LEN
    assert long_ex.target_ids == full.target_ids
    assert tiny_tokenizer.decode(long_ex.target_ids[:-1]) == record["title"]
    assert long_ex.target_ids[-1] == chat_tokens(tiny_tokenizer).end_of_turn_id
    assert long_ex.reference == record["title"]
    assert long_ex.abstract == record["abstract"]  # the reference data itself is kept whole

    prompt = tiny_tokenizer.decode(long_ex.prompt_ids)
    assert prompt.endswith(ASSISTANT_HEADER)
    assert prompt.startswith("<|im_start|>system\n")
    user = prompt.split("<|im_start|>user\nAbstract:\n", 1)[1].split("\n\nWhat is a good title", 1)[0]
    assert user and record["abstract"].startswith(user)
    assert len(user) < len(record["abstract"])
    # The truncated prompt is exactly the chat prompt of the shortened abstract.
    assert (
        long_ex.prompt_ids == tiny_tokenizer(render_prompt(tiny_tokenizer, user), add_special_tokens=False)["input_ids"]
    )

    assert not short_ex.truncated
    assert tiny_tokenizer.decode(short_ex.prompt_ids).count("model data.") == 1


def test_truncation_to_an_empty_abstract(tiny_tokenizer):
    record = {"id": "r", "title": "Dark Matter Decay", "abstract": synthetic_pairs(1)[0]["abstract"]}
    empty_prompt = tiny_tokenizer(render_prompt(tiny_tokenizer, ""), add_special_tokens=False)["input_ids"]
    title_len = len(tiny_tokenizer(record["title"], add_special_tokens=False)["input_ids"]) + 1
    (ex,) = encode_pairs([record], tiny_tokenizer, len(empty_prompt) + title_len, title_budget=title_len)
    assert ex.truncated
    assert ex.prompt_ids == empty_prompt
    assert len(ex.prompt_ids) + len(ex.target_ids) == len(empty_prompt) + title_len


def test_truncation_does_not_depend_on_the_reference_title(tiny_tokenizer):
    """A test prompt must not leak its answer: the abstract is cut by the title budget, not the title's length."""
    abstract = " ".join(synthetic_pairs(1, seed=3)[0]["abstract"] for _ in range(4))
    short = {"id": "a", "title": "Spin", "abstract": abstract}
    long = {
        "id": "b",
        "title": "Sparse Convex Estimators On Random Graphs With Dark Matter Decay",
        "abstract": abstract,
    }
    a, b = encode_pairs([short, long], tiny_tokenizer, max_seq_length=MAX_LEN, title_budget=48)
    assert a.truncated and b.truncated
    assert len(a.target_ids) < len(b.target_ids) <= 48
    assert a.prompt_ids == b.prompt_ids
    assert len(a.prompt_ids) <= MAX_LEN - 48


def test_a_title_longer_than_the_budget_still_fits_whole(tiny_tokenizer):
    abstract = " ".join(synthetic_pairs(1, seed=3)[0]["abstract"] for _ in range(4))
    record = {
        "id": "t",
        "title": "Sparse Convex Estimators On Random Graphs With Dark Matter Decay",
        "abstract": abstract,
    }
    (ex,) = encode_pairs([record], tiny_tokenizer, max_seq_length=MAX_LEN, title_budget=4)
    assert len(ex.target_ids) > 4
    assert tiny_tokenizer.decode(ex.target_ids[:-1]) == record["title"]
    assert len(ex.prompt_ids) + len(ex.target_ids) <= MAX_LEN


def test_max_seq_length_too_small_for_the_prompt_and_title(tiny_tokenizer):
    record = {"id": "tiny", "title": "Dark Matter Decay", "abstract": "model data network."}
    empty_prompt = tiny_tokenizer(render_prompt(tiny_tokenizer, ""), add_special_tokens=False)["input_ids"]
    with pytest.raises(DataError, match="max_seq_length") as info:
        encode_pairs([record], tiny_tokenizer, max_seq_length=len(empty_prompt))
    assert "'tiny'" in str(info.value)
