"""LoRA scopes through the real Unsloth path on tiny models, and batched generation."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import synthetic_pairs
from titlegen.data.collate import Collator
from titlegen.data.tokenization import chat_tokens, encode_pairs, load_tokenizer
from titlegen.errors import OptionError
from titlegen.model import generation, loading, lora
from titlegen.model.generation import Decoding
from titlegen.model.lora import DEFAULT_TARGET_MODULES


def lora_model(model_dir, scope, r=16):
    base = loading.load_base_model(str(model_dir), 256)
    return lora.apply_lora(base, scope, r, 16, 0.0, DEFAULT_TARGET_MODULES, False, 0)


def expected_lora_params(layers: int, r: int, hidden: int, kv: int, mlp: int) -> int:
    """r * (in + out) for each adapted projection of a decoder layer, times the adapted layers."""
    attention = 2 * (hidden + hidden) + 2 * (hidden + kv)  # q, o ; k, v
    return layers * r * (attention + 3 * (hidden + mlp))  # gate, up, down


def adapted_layers(model) -> set[int]:
    return {int(re.search(r"layers\.(\d+)\.", name).group(1)) for name in lora.lora_module_names(model)}


@pytest.mark.parametrize(
    ("scope", "layers"),
    [("all", {0, 1, 2}), ("last", {2}), ([0, 2], {0, 2}), ("none", set())],
)
def test_scope_adapts_exactly_the_chosen_layers(tiny_llama_dir, scope, layers):
    model = lora_model(tiny_llama_dir, scope)
    assert adapted_layers(model) == layers
    assert len(lora.lora_module_names(model)) == 7 * len(layers)
    # hidden 64, 2 of 4 heads for k/v (32), MLP 128: the tiny model of tests/helpers.py
    assert lora.trainable_parameters(model) == expected_lora_params(len(layers), 16, 64, 32, 128)
    names = {n.rsplit(".", 1)[-1] for n in lora.lora_module_names(model)}
    assert names == (set(DEFAULT_TARGET_MODULES) if layers else set())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trainable)


@pytest.mark.parametrize(("scope", "count"), [("all", 8_798_208), ("last", 366_592)])
def test_qwen25_05b_scope_counts(scope, count):
    """The real Qwen2.5-0.5B shape, built on the meta device (no weights), through scope_layers and PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    layers = lora.scope_layers(scope, lora.decoder_layer_count(base))
    config = LoraConfig(r=16, lora_alpha=16, target_modules=list(DEFAULT_TARGET_MODULES), layers_to_transform=layers)
    model = get_peft_model(base, config)
    assert (
        lora.trainable_parameters(model) == count == expected_lora_params(len(layers or range(24)), 16, 896, 128, 4864)
    )


@pytest.mark.parametrize(
    ("scope", "message"),
    [([5], r"layer indices \[5\] are out of range; this model has 3 decoder layers"), ("first", "is not a scope")],
)
def test_bad_scope_is_a_clear_error(tiny_llama_dir, scope, message):
    with pytest.raises(OptionError, match=message):
        lora_model(tiny_llama_dir, scope)


def test_unknown_target_module_and_bad_rank(tiny_model_dir):
    base = loading.load_base_model(str(tiny_model_dir), 256)
    with pytest.raises(OptionError, match=r"\['qkv_proj'\] not found .* choose from"):
        lora.apply_lora(base, "all", 16, 16, 0.0, ["qkv_proj"], False, 0)
    with pytest.raises(OptionError, match="lora_r=0"):
        lora.apply_lora(base, "all", 0, 16, 0.0, DEFAULT_TARGET_MODULES, False, 0)


@pytest.mark.parametrize("decoding", [Decoding(), Decoding("beam", num_beams=3)], ids=["greedy", "beam"])
def test_batched_left_padded_generation_equals_one_by_one(peaky_model_dir, decoding):
    tokenizer = load_tokenizer(str(peaky_model_dir))
    chat = chat_tokens(tokenizer)
    model = lora_model(peaky_model_dir, "none")
    assert next(model.parameters()).dtype == torch.float32 or model.dtype == torch.float32
    examples = encode_pairs(synthetic_pairs(6, seed=3), tokenizer, 1024)  # no truncation: lengths differ
    # Different abstract lengths, so the batch really is padded.
    assert len({len(ex.prompt_ids) for ex in examples}) > 1
    batch = Collator(chat.pad_id, for_generation=True)(list(enumerate(examples)))
    batched = generation.generate(
        model, batch["prompt_ids"], batch["prompt_attention_mask"], 12, chat.end_of_turn_id, chat.pad_id, decoding
    )
    single = []
    for ex in examples:
        ids = torch.tensor([ex.prompt_ids])
        single += generation.generate(model, ids, torch.ones_like(ids), 12, chat.end_of_turn_id, chat.pad_id, decoding)
    assert batched == single
    assert len({tuple(t) for t in single}) > 1, "the outputs should depend on the prompt"


def test_generation_is_plain_greedy_whatever_the_checkpoint_suggests(peaky_model_dir, tmp_path):
    """Qwen2.5-Instruct ships sampling settings and a repetition penalty; titles must still be argmax decoding."""
    from transformers import GenerationConfig

    model_dir = Path(shutil.copytree(peaky_model_dir, tmp_path / "peaky"))  # a copy: this test adds a file
    GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=3.0).save_pretrained(
        model_dir
    )
    tokenizer = load_tokenizer(str(model_dir))
    chat = chat_tokens(tokenizer)
    model = lora_model(model_dir, "none")
    assert model.generation_config.repetition_penalty == 3.0
    prompt = torch.tensor([encode_pairs(synthetic_pairs(1, seed=5), tokenizer, 256)[0].prompt_ids])
    expected, ids = [], prompt
    with torch.no_grad():
        for _ in range(40):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            expected.append(token)
            if token == chat.end_of_turn_id:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    got = generation.generate(model, prompt, torch.ones_like(prompt), 40, chat.end_of_turn_id, chat.pad_id)
    assert got == [expected]
    assert len(set(expected)) < len(expected), "a repeated token shows that no repetition penalty was applied"
