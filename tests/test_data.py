"""Chat tokens, label masking, truncation, padding and the DataModule, with the tiny ChatML tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from titlegen.data import (
    IGNORE_INDEX,
    Collator,
    IndexedDataset,
    TitleDataModule,
    chat_tokens,
    encode_pairs,
    left_pad,
    render_prompt,
)
from titlegen.splits import DataError

from .conftest import build_tokenizer, synthetic_pairs, write_jsonl

TRAIN_KEYS = {"input_ids", "attention_mask", "labels", "label_positions"}
GENERATION_KEYS = {"prompt_ids", "prompt_attention_mask", "ids", "references", "abstracts", "index"}
ASSISTANT_HEADER = "<|im_start|>assistant\n"
# The tiny tokenizer spends 116 tokens on the prompt of an empty abstract; synthetic pairs need 266-510 in all.
MAX_LEN = 192


def _records(n: int, seed: int = 0) -> list[dict[str, str]]:
    return synthetic_pairs(n, seed=seed)


# --- chat_tokens ----------------------------------------------------------------------------------------------------


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
    with pytest.raises(ValueError, match="No pad token distinct"):
        chat_tokens(tokenizer)


# --- encode_pairs and Collator ---------------------------------------------------------------------------------------


def test_encode_pairs_prompt_and_target(tiny_tokenizer):
    records = _records(3)
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


def test_collator_labels_supervise_only_the_title_and_end_of_turn(tiny_tokenizer):
    records = _records(4)
    records[1]["abstract"] = " ".join(records[1]["abstract"].split()[:32])  # rows of different lengths
    eot = chat_tokens(tiny_tokenizer).end_of_turn_id
    pad_id = chat_tokens(tiny_tokenizer).pad_id
    examples = encode_pairs(records, tiny_tokenizer, max_seq_length=1024)
    batch = Collator(pad_id, for_generation=True)(list(enumerate(examples)))

    lengths = [len(ex.prompt_ids) + len(ex.target_ids) for ex in examples]
    assert len(set(lengths)) > 1
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, max(lengths))
    for row, (ex, record) in enumerate(zip(examples, records, strict=True)):
        labels, input_ids, mask = batch["labels"][row], batch["input_ids"][row], batch["attention_mask"][row]
        supervised = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        start, end = len(ex.prompt_ids), lengths[row]
        assert supervised == list(range(start, end))
        assert labels[start:end].tolist() == ex.target_ids
        assert labels[end - 1].item() == eot
        assert tiny_tokenizer.decode(labels[start : end - 1].tolist()) == record["title"]
        assert torch.equal(input_ids[supervised], labels[supervised])
        assert input_ids[:start].tolist() == ex.prompt_ids
        # Right padding of the training inputs.
        assert mask[:end].eq(1).all() and mask[end:].eq(0).all()
        assert labels[end:].eq(IGNORE_INDEX).all()
        assert input_ids[end:].eq(pad_id).all()
    assert (batch["attention_mask"] == 0).any()


def test_collator_for_training_has_only_training_keys(tiny_tokenizer):
    examples = encode_pairs(_records(2), tiny_tokenizer, max_seq_length=1024)
    batch = Collator(chat_tokens(tiny_tokenizer).pad_id, for_generation=False)(list(enumerate(examples)))
    assert set(batch) == TRAIN_KEYS
    # label_positions: the flat (row * width + t) positions whose next token is a label, exactly those.
    width = batch["labels"].shape[1]
    expected = [r * width + t - 1 for r in range(2) for t in range(1, width) if batch["labels"][r, t] != -100]
    assert batch["label_positions"].tolist() == expected
    assert len(expected) == sum(len(ex.target_ids) for ex in examples)


def test_collator_left_pads_generation_prompts_and_carries_metadata(tiny_tokenizer):
    records = _records(3)
    records[0]["abstract"] = " ".join(records[0]["abstract"].split()[:31])
    pad_id = chat_tokens(tiny_tokenizer).pad_id
    examples = encode_pairs(records, tiny_tokenizer, max_seq_length=1024)
    items = [(10, examples[0]), (3, examples[1]), (7, examples[2])]
    batch = Collator(pad_id, for_generation=True)(items)

    assert set(batch) == TRAIN_KEYS | GENERATION_KEYS
    width = max(len(ex.prompt_ids) for ex in examples)
    assert batch["prompt_ids"].shape == batch["prompt_attention_mask"].shape == (3, width)
    assert len({len(ex.prompt_ids) for ex in examples}) > 1
    for row, ex in enumerate(examples):
        n = len(ex.prompt_ids)
        ids, mask = batch["prompt_ids"][row], batch["prompt_attention_mask"][row]
        assert ids[width - n :].tolist() == ex.prompt_ids
        assert ids[: width - n].eq(pad_id).all()
        assert mask[: width - n].eq(0).all() and mask[width - n :].eq(1).all()
        assert ids[-1].item() == ex.prompt_ids[-1]
    assert batch["index"].tolist() == [10, 3, 7]
    assert batch["index"].dtype == torch.long
    assert batch["ids"] == [r["id"] for r in records]
    assert batch["references"] == [r["title"] for r in records]
    assert batch["abstracts"] == [r["abstract"] for r in records]


def test_left_pad():
    out = left_pad([[1, 2, 3], [4], [5, 6]], pad_id=0)
    assert out["prompt_ids"].tolist() == [[1, 2, 3], [0, 0, 4], [0, 5, 6]]
    assert out["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_indexed_dataset(tiny_tokenizer):
    examples = encode_pairs(_records(3), tiny_tokenizer, max_seq_length=1024)
    dataset = IndexedDataset(examples)
    assert len(dataset) == 3
    assert dataset[2] == (2, examples[2])


# --- truncation -----------------------------------------------------------------------------------------------------


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


# --- TitleDataModule ------------------------------------------------------------------------------------------------


def _datamodule(tiny_model_dir, **kwargs) -> TitleDataModule:
    options = dict(model_name=str(tiny_model_dir), max_seq_length=256, batch_size=4, eval_batch_size=4, num_workers=0)
    return TitleDataModule(**{**options, **kwargs})


def test_datamodule_end_to_end(pairs_file, tiny_model_dir, tmp_path):
    dm = _datamodule(tiny_model_dir, source=str(pairs_file), data_dir=str(tmp_path / "splits"))
    dm.prepare_data()
    assert all((tmp_path / "splits" / f"{s}.jsonl").is_file() for s in ("train", "validation", "test"))
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 108
    assert len(dm.datasets["validation"]) == 6
    assert "test" not in dm.datasets

    pad_id = chat_tokens(dm.tokenizer).pad_id
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == 27
    for batch in train_batches:
        assert set(batch) == TRAIN_KEYS
        assert batch["input_ids"].shape[0] == 4
        assert batch["input_ids"].shape[1] <= 256
        assert (batch["labels"] != IGNORE_INDEX).sum(dim=1).gt(1).all()
        assert batch["input_ids"][batch["attention_mask"] == 0].eq(pad_id).all()

    val_batches = list(dm.val_dataloader())
    assert [len(b["ids"]) for b in val_batches] == [4, 2]
    assert all(set(b) == TRAIN_KEYS | GENERATION_KEYS for b in val_batches)
    validation = [json.loads(line) for line in (tmp_path / "splits" / "validation.jsonl").read_text().splitlines()]
    assert [i for b in val_batches for i in b["ids"]] == [r["id"] for r in validation]
    assert [t for b in val_batches for t in b["references"]] == [r["title"] for r in validation]
    assert torch.cat([b["index"] for b in val_batches]).tolist() == list(range(6))

    dm.setup("test")
    test_batches = list(dm.test_dataloader())
    test_rows = [json.loads(line) for line in (tmp_path / "splits" / "test.jsonl").read_text().splitlines()]
    assert [i for b in test_batches for i in b["ids"]] == [r["id"] for r in test_rows]
    assert all(set(b) == TRAIN_KEYS | GENERATION_KEYS for b in test_batches)
    assert not {r["id"] for r in test_rows} & {ex.id for ex in dm.datasets["train"].examples}


def test_datamodule_explicit_files(tiny_model_dir, tmp_path):
    train = write_jsonl(tmp_path / "my_train.jsonl", synthetic_pairs(10, seed=1))
    validation = write_jsonl(tmp_path / "my_val.jsonl", synthetic_pairs(3, seed=2))
    test = write_jsonl(tmp_path / "my_test.jsonl", synthetic_pairs(5, seed=3))
    data_dir = tmp_path / "unused"
    dm = _datamodule(
        tiny_model_dir,
        source=str(tmp_path / "no-such-source"),  # never read: all three splits are given
        data_dir=str(data_dir),
        train_file=str(train),
        validation_file=str(validation),
        test_file=str(test),
    )
    dm.prepare_data()
    assert not data_dir.exists()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) == 10
    assert len(dm.datasets["validation"]) == 3
    assert len(dm.datasets["test"]) == 5
    assert [ex.reference for ex in dm.datasets["test"].examples] == [r["title"] for r in synthetic_pairs(5, seed=3)]
    assert [i for b in dm.val_dataloader() for i in b["ids"]] == [r["id"] for r in synthetic_pairs(3, seed=2)]
    assert sum(b["input_ids"].shape[0] for b in dm.train_dataloader()) == 10


def test_datamodule_explicit_file_overrides_one_split(pairs_file, tiny_model_dir, tmp_path):
    test = write_jsonl(tmp_path / "my_test.jsonl", synthetic_pairs(7, seed=5))
    dm = _datamodule(tiny_model_dir, source=str(pairs_file), data_dir=str(tmp_path / "splits"), test_file=str(test))
    dm.prepare_data()
    assert (tmp_path / "splits" / "train.jsonl").is_file()
    dm.setup("test")
    assert [ex.reference for ex in dm.datasets["test"].examples] == [r["title"] for r in synthetic_pairs(7, seed=5)]


def test_datamodule_setup_counts_truncated_abstracts(pairs_file, tiny_model_dir, tmp_path, caplog):
    dm = _datamodule(tiny_model_dir, source=str(pairs_file), data_dir=str(tmp_path / "splits"), max_seq_length=MAX_LEN)
    dm.prepare_data()
    with caplog.at_level("WARNING", logger="titlegen.data"):
        dm.setup("validate")
    assert set(dm.datasets) == {"validation"}
    examples = dm.datasets["validation"].examples
    truncated = sum(ex.truncated for ex in examples)
    assert truncated > 0
    reports = [r.getMessage() for r in caplog.records if "abstracts truncated" in r.getMessage()]
    assert reports == [
        f"{tmp_path / 'splits' / 'validation.jsonl'}: {truncated} of {len(examples)} abstracts truncated"
        f" to fit max_seq_length={MAX_LEN} (titles are never cut)."
    ]
    assert all(len(ex.prompt_ids) + len(ex.target_ids) <= MAX_LEN for ex in examples)


def test_impossible_data_options_are_rejected_together():
    with pytest.raises(DataError, match=r"max_seq_length=0: must be positive\n.*batch_size=-1: must be positive"):
        TitleDataModule(max_seq_length=0, batch_size=-1)


def test_collator_pads_training_batches_to_a_multiple(tiny_tokenizer):
    """Bucketed widths bound the batch shapes (compiles, CUDA graphs); the extra columns are inert padding."""
    pad_id = chat_tokens(tiny_tokenizer).pad_id
    examples = encode_pairs(_records(3), tiny_tokenizer, max_seq_length=1024)
    items = list(enumerate(examples))
    tight = Collator(pad_id, for_generation=False)(items)
    padded = Collator(pad_id, for_generation=False, pad_to_multiple_of=64)(items)
    width = tight["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] == -(-width // 64) * 64 > width
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        assert torch.equal(padded[key][:, :width], tight[key])
        assert (padded[key][:, width:] == fill).all()
    # Label positions are flat indices, so they move with the width but pick the same (row, column) pairs.
    padded_width = padded["input_ids"].shape[1]
    rows, columns = padded["label_positions"] // padded_width, padded["label_positions"] % padded_width
    assert torch.equal(rows * width + columns, tight["label_positions"])


def test_pad_to_multiple_of_must_be_positive():
    with pytest.raises(DataError, match=r"data.pad_to_multiple_of=0: must be positive"):
        TitleDataModule(pad_to_multiple_of=0)
