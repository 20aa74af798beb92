"""Decoding options: what each asks of `generate()`, minimum-Bayes-risk selection, and no per-call warnings."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.helpers import synthetic_pairs
from titlegen.data.collate import Collator
from titlegen.data.tokenization import chat_tokens, encode_pairs, load_tokenizer
from titlegen.model import generation, loading, lora
from titlegen.model.generation import Decoding, mbr_choice


def test_each_strategy_sets_every_option_it_depends_on():
    greedy = Decoding().options()
    assert greedy["do_sample"] is False and greedy["num_beams"] == 1 and greedy["temperature"] is None
    beam = Decoding("beam", num_beams=5, length_penalty=0.6).options()
    assert (beam["num_beams"], beam["length_penalty"], beam["do_sample"]) == (5, 0.6, False)
    sample = Decoding("sample", temperature=0.3, top_p=0.8).options()
    assert (sample["do_sample"], sample["temperature"], sample["top_p"]) == (True, 0.3, 0.8)
    assert sample["num_return_sequences"] == 1
    assert Decoding("mbr", candidates=6).options()["num_return_sequences"] == 6
    # Qwen2.5-Instruct's generation_config has repetition_penalty 1.05, which would also penalise pad tokens.
    assert all(d.options()["repetition_penalty"] == 1.0 for d in (Decoding(), Decoding("beam"), Decoding("mbr")))


def test_mbr_keeps_the_candidate_closest_to_the_others():
    # Group 0: candidates 0 and 2 agree, 1 is an outlier; 2 is closer to both others than 0 is.
    # Group 1: candidate 0 is empty (invalid); of the valid two, the first of equals.
    embeddings = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]], [[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]]]
    )  # fmt: skip
    valid = torch.tensor([[True, True, True], [False, True, True]])
    assert mbr_choice(embeddings, valid).tolist() == [2, 1]
    # A group with one valid candidate takes it.
    assert mbr_choice(embeddings[:1], torch.tensor([[False, True, False]])).tolist() == [1]


def test_mbr_returns_one_of_each_prompts_candidates(peaky_model_dir, monkeypatch):
    tokenizer = load_tokenizer(str(peaky_model_dir))
    chat = chat_tokens(tokenizer)
    model = lora.apply_lora(loading.load_base_model(str(peaky_model_dir), 1024), "none", 8, 8, 0.0,
                            lora.DEFAULT_TARGET_MODULES, False, 0)  # fmt: skip
    examples = encode_pairs(synthetic_pairs(3, seed=5), tokenizer, 1024)
    batch = Collator(chat.pad_id, for_generation=True)(list(enumerate(examples)))
    sampled: list[list[list[int]]] = []
    original = generation._minimum_bayes_risk

    def spy(model, candidates, per_prompt, end, pad):
        sampled.append(candidates)
        return original(model, candidates, per_prompt, end, pad)

    monkeypatch.setattr(generation, "_minimum_bayes_risk", spy)
    torch.manual_seed(0)
    titles = generation.generate(model, batch["prompt_ids"], batch["prompt_attention_mask"], 8, chat.end_of_turn_id,
                                 chat.pad_id, Decoding("mbr", candidates=4, temperature=1.5))  # fmt: skip
    assert len(sampled[0]) == 12 and len(titles) == 3
    for i, title in enumerate(titles):
        assert title in sampled[0][4 * i : 4 * i + 4], "each prompt's pick is one of its own candidates"
    assert len({tuple(c) for c in sampled[0]}) > 3, "sampling gave different candidates"


def test_no_max_length_warning_at_each_call(tiny_model_dir, tmp_path, caplog):
    # Unsloth's loader sets generation_config.max_length to the context size on a GPU; with max_new_tokens as well,
    # transformers warned at every generate() call. The loader resets it: load a model that comes with one set.
    import shutil

    from transformers import GenerationConfig

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    GenerationConfig(max_length=2048).save_pretrained(model_dir)
    model = loading.load_base_model(str(model_dir), 512)

    assert model.generation_config.max_length == GenerationConfig().max_length
    tokenizer = load_tokenizer(str(tiny_model_dir))
    chat = chat_tokens(tokenizer)
    ids = torch.tensor([encode_pairs(synthetic_pairs(1), tokenizer, 512)[0].prompt_ids])
    with caplog.at_level(logging.WARNING):
        generation.generate(model, ids, torch.ones_like(ids), 4, chat.end_of_turn_id, chat.pad_id)
    assert "seem to have been set" not in caplog.text
    model.generation_config.update(max_length=2048)  # what Unsloth's loader does on a GPU
    with caplog.at_level(logging.WARNING):
        generation.generate(model, ids, torch.ones_like(ids), 4, chat.end_of_turn_id, chat.pad_id)
    assert "seem to have been set" in caplog.text, "the check above can fail: transformers does warn then"


@pytest.mark.parametrize("strategy", ["beam", "sample", "mbr"])
def test_every_strategy_runs_through_test(strategy, tiny_model_dir, tmp_path, pairs_file):
    from tests.helpers import cli_args
    from titlegen.cli import main

    cli = main(["test", "--config", "baseline.yaml", *cli_args(tiny_model_dir, tmp_path, source=pairs_file,
                eval_batch_size=4), "--trainer.limit_test_batches=1", f"--model.generation={strategy}"])  # fmt: skip
    assert cli.trainer.state.finished and "test/bertscore_f1" in cli.trainer.callback_metrics
    import json
    from pathlib import Path

    metrics = json.loads(Path(cli.trainer.log_dir, "metrics.json").read_text())
    test_split = (tmp_path / "splits" / "test.jsonl").read_text().splitlines()
    assert metrics["decoding"]["strategy"] == strategy and metrics["samples"] == len(test_split)
