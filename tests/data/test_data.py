"""Chat tokens, label masking, truncation, padding and the DataModule, with the tiny ChatML tokenizer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import MAX_LEN, synthetic_pairs, write_jsonl
from titlegen.data.collate import Collator, IndexedDataset, left_pad
from titlegen.data.datamodule import TitleDataModule
from titlegen.data.tokenization import IGNORE_INDEX, chat_tokens, encode_pairs
from titlegen.errors import OptionError

TRAIN_KEYS = {"input_ids", "attention_mask", "labels", "label_positions"}
GENERATION_KEYS = {"prompt_ids", "prompt_attention_mask", "ids", "references", "abstracts", "index"}

# --- chat_tokens ----------------------------------------------------------------------------------------------------


# --- encode_pairs and Collator ---------------------------------------------------------------------------------------


def test_collator_labels_supervise_only_the_title_and_end_of_turn(tiny_tokenizer):
    records = synthetic_pairs(4)
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
    examples = encode_pairs(synthetic_pairs(2), tiny_tokenizer, max_seq_length=1024)
    batch = Collator(chat_tokens(tiny_tokenizer).pad_id, for_generation=False)(list(enumerate(examples)))
    assert set(batch) == TRAIN_KEYS
    # label_positions: the flat (row * width + t) positions whose next token is a label, exactly those.
    width = batch["labels"].shape[1]
    expected = [r * width + t - 1 for r in range(2) for t in range(1, width) if batch["labels"][r, t] != -100]
    assert batch["label_positions"].tolist() == expected
    assert len(expected) == sum(len(ex.target_ids) for ex in examples)


def test_collator_left_pads_generation_prompts_and_carries_metadata(tiny_tokenizer):
    records = synthetic_pairs(3)
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
    examples = encode_pairs(synthetic_pairs(3), tiny_tokenizer, max_seq_length=1024)
    dataset = IndexedDataset(examples)
    assert len(dataset) == 3
    assert dataset[2] == (2, examples[2])


# --- truncation -----------------------------------------------------------------------------------------------------


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
    with pytest.raises(OptionError, match=r"max_seq_length=0: must be positive\n.*batch_size=-1: must be positive"):
        TitleDataModule(max_seq_length=0, batch_size=-1)


def test_collator_pads_training_batches_to_a_multiple(tiny_tokenizer):
    """Bucketed widths bound the batch shapes (compiles, CUDA graphs); the extra columns are inert padding."""
    pad_id = chat_tokens(tiny_tokenizer).pad_id
    examples = encode_pairs(synthetic_pairs(3), tiny_tokenizer, max_seq_length=1024)
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
    with pytest.raises(OptionError, match=r"data.pad_to_multiple_of=0: must be positive"):
        TitleDataModule(pad_to_multiple_of=0)


@pytest.mark.parametrize(
    ("pin_memory", "device", "pinned"),
    [(True, "cuda", True), (True, "cpu", False), (False, "cuda", False)],
)
def test_pin_memory_applies_only_when_asked_and_on_a_gpu(
    pairs_file, tiny_model_dir, tmp_path, pin_memory, device, pinned
):
    dm = _datamodule(tiny_model_dir, source=str(pairs_file), data_dir=str(tmp_path / "splits"), pin_memory=pin_memory)
    dm.prepare_data()
    dm.setup("fit")
    # The loaders read only the root device of the trainer's strategy and, for the training order, its ranks; no GPU
    # is needed to build (not iterate) them.
    strategy = SimpleNamespace(root_device=torch.device(device))
    dm.trainer = SimpleNamespace(strategy=strategy, state=None, world_size=1, global_rank=0)
    assert dm.train_dataloader().pin_memory is pinned
    assert dm.val_dataloader().pin_memory is pinned
