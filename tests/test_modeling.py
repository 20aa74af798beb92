"""LoRA scopes through the real Unsloth path on tiny models, and batched generation."""

from __future__ import annotations

import re

import pytest
import torch

from titlegen import modeling
from titlegen.data import Collator, chat_tokens, encode_pairs, load_tokenizer
from titlegen.modeling import DEFAULT_TARGET_MODULES, ModelConfigError

from .conftest import build_tiny_model, synthetic_pairs


def lora_model(model_dir, scope, r=16):
    base = modeling.load_base_model(str(model_dir), 256)
    return modeling.apply_lora(base, scope, r, 16, 0.0, DEFAULT_TARGET_MODULES, False, 0)


def expected_lora_params(layers: int, r: int, hidden: int, kv: int, mlp: int) -> int:
    """r * (in + out) for each adapted projection of a decoder layer, times the adapted layers."""
    attention = 2 * (hidden + hidden) + 2 * (hidden + kv)  # q, o ; k, v
    return layers * r * (attention + 3 * (hidden + mlp))  # gate, up, down


def adapted_layers(model) -> set[int]:
    return {int(re.search(r"layers\.(\d+)\.", name).group(1)) for name in modeling.lora_module_names(model)}


@pytest.mark.parametrize(
    ("scope", "layers"),
    [("all", {0, 1, 2}), ("last", {2}), ([0, 2], {0, 2}), ("none", set())],
)
def test_scope_adapts_exactly_the_chosen_layers(tiny_llama_dir, scope, layers):
    model = lora_model(tiny_llama_dir, scope)
    assert adapted_layers(model) == layers
    assert len(modeling.lora_module_names(model)) == 7 * len(layers)
    # hidden 64, 2 of 4 heads for k/v (32), MLP 128: the tiny model of conftest
    assert modeling.trainable_parameters(model) == expected_lora_params(len(layers), 16, 64, 32, 128)
    names = {n.rsplit(".", 1)[-1] for n in modeling.lora_module_names(model)}
    assert names == (set(DEFAULT_TARGET_MODULES) if layers else set())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trainable)


def test_qwen25_05b_counts_match_the_issue():
    """Qwen2.5-0.5B (hidden 896, 2 KV heads of 64, MLP 4864, 24 layers) at r=16: 8,798,208 all, 366,592 last."""
    assert expected_lora_params(24, 16, 896, 128, 4864) == 8_798_208
    assert expected_lora_params(1, 16, 896, 128, 4864) == 366_592
    assert modeling.scope_layers("last", 24) == [23]
    assert modeling.scope_layers("all", 24) is None


@pytest.mark.parametrize(
    ("scope", "message"),
    [([5], r"layer indices \[5\] are out of range; this model has 3 decoder layers"), ("first", "is not a scope")],
)
def test_bad_scope_is_a_clear_error(tiny_llama_dir, scope, message):
    with pytest.raises(ModelConfigError, match=message):
        lora_model(tiny_llama_dir, scope)


def test_unknown_target_module_and_bad_rank(tiny_model_dir):
    base = modeling.load_base_model(str(tiny_model_dir), 256)
    with pytest.raises(ModelConfigError, match=r"\['qkv_proj'\] not found .* choose from"):
        modeling.apply_lora(base, "all", 16, 16, 0.0, ["qkv_proj"], False, 0)
    with pytest.raises(ModelConfigError, match="lora_r=0"):
        modeling.apply_lora(base, "all", 0, 16, 0.0, DEFAULT_TARGET_MODULES, False, 0)


@pytest.fixture(scope="module")
def peaky_model_dir(tmp_path_factory):
    """A random model with large weights, so that greedy choices depend on the context (not one repeated token)."""
    return build_tiny_model(tmp_path_factory.mktemp("peaky"), "qwen2", initializer_range=0.5)


def test_batched_left_padded_generation_equals_one_by_one(peaky_model_dir):
    tokenizer = load_tokenizer(str(peaky_model_dir))
    chat = chat_tokens(tokenizer)
    model = lora_model(peaky_model_dir, "none")
    assert next(model.parameters()).dtype == torch.float32 or model.dtype == torch.float32
    examples = encode_pairs(synthetic_pairs(6, seed=3), tokenizer, 256)
    # Different abstract lengths, so the batch really is padded.
    assert len({len(ex.prompt_ids) for ex in examples}) > 1
    batch = Collator(chat.pad_id, for_generation=True)(list(enumerate(examples)))
    batched = modeling.generate(
        model, batch["prompt_ids"], batch["prompt_attention_mask"], 12, chat.end_of_turn_id, chat.pad_id
    )
    single = []
    for ex in examples:
        ids = torch.tensor([ex.prompt_ids])
        single += modeling.generate(model, ids, torch.ones_like(ids), 12, chat.end_of_turn_id, chat.pad_id)
    assert batched == single
    assert len({tuple(t) for t in single}) > 1, "the outputs should depend on the prompt"
