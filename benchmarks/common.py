"""Shared pieces of the benchmarks: the Qwen2.5-0.5B-shaped model, the samples, and GPU timing."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

# Qwen2.5-0.5B-Instruct's shape (its config.json); speed and memory do not depend on the weight values.
QWEN25_05B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
)  # fmt: skip
MAX_SEQ_LENGTH = 512  # the configs' default
MAX_NEW_TOKENS = 48  # the configs' default title budget
SCOPE_CONFIGS = {"all": "full_lora.yaml", "last": "last_layer_lora.yaml"}  # under configs/
HARNESS_ROOT = Path(__file__).resolve().parents[1]


def build_model(out_dir: Path, tokenizer_source: str) -> Path:
    """Save a random Qwen2.5-0.5B-shaped model with the tokenizer of `tokenizer_source` (its chat template too)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from titlegen.data.tokenization import chat_tokens, load_tokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = load_tokenizer(tokenizer_source)
    chat = chat_tokens(tokenizer)
    config = Qwen2Config(**QWEN25_05B, eos_token_id=chat.end_of_turn_id, pad_token_id=chat.pad_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def sample_records(pairs: Path, n: int, seed: int) -> list[dict[str, str]]:
    """`n` random abstract/title pairs of the dataset: their token lengths are the real distribution."""
    from titlegen.data.records import read_pairs
    from titlegen.data.splits import SplitSettings, clean_and_dedupe

    records = clean_and_dedupe(read_pairs(pairs), SplitSettings(source=str(pairs), source_hash=""))
    if len(records) < n:
        raise SystemExit(f"{pairs} has {len(records)} usable pairs; the benchmark needs {n}")
    return random.Random(seed).sample(records, n)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write once: DDP ranks re-run the script and must not truncate a file that another rank is reading."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare_samples(
    pairs: Path, model_dir: Path, samples: int, warmup_batches: int, per_step: int, seed: int, out_root: Path
) -> Path:
    """A folder with `warm.jsonl` and `measured.jsonl`, written once; every variant of a run reads the same two.

    measured: `samples` random pairs, one timed pass. warm: `warmup_batches * per_step` other random pairs, then the
    measured pass's `per_step` longest samples (`per_step`: batch size x devices), so every variant's memory pools
    have grown to the pass's largest batch before the timer starts. Titlegen's timed pass starts with that batch
    (length grouping puts it first): without it, titlegen paid for new pinned blocks and cudaMallocs inside its timed
    window that the raw loops' long random warm-up batches had already paid for.

    Written with this checkout's titlegen, so a measurement of another titlegen source (`--titlegen-src`) reads the
    same files without importing this checkout's data code.
    """
    source = hashlib.sha256(f"{pairs.resolve()}\n{model_dir.resolve()}".encode()).hexdigest()[:8]
    out = out_root / f"samples-{pairs.stem}-{source}-n{samples}-w{warmup_batches}x{per_step}-seed{seed}"
    if (out / "measured.jsonl").is_file():
        return out
    warm_n = warmup_batches * per_step
    records = sample_records(pairs, warm_n + samples, seed=seed)
    warm, measured = records[:warm_n], records[warm_n:]
    items = examples(measured, model_dir)
    warm += [measured[i] for i in by_length(items, list(range(len(items))))[-per_step:]]
    write_jsonl(out / "warm.jsonl", warm)
    write_jsonl(out / "measured.jsonl", measured)
    return out


def examples(records: list[dict[str, str]], model_dir: Path) -> list[Any]:
    """Tokenized exactly as titlegen's DataModule does (chat template, title-only labels, same prompt budget)."""
    from titlegen.data.tokenization import encode_pairs, load_tokenizer

    return encode_pairs(records, load_tokenizer(str(model_dir)), MAX_SEQ_LENGTH, MAX_NEW_TOKENS)


def by_length(items: list[Any], indices: list[int]) -> list[int]:
    """`indices` ordered by sample length (prompt + title tokens), shortest first."""
    return sorted(indices, key=lambda i: len(items[i].prompt_ids) + len(items[i].target_ids))


def training_batches(
    model_dir: Path, items: list[Any], order: list[int], batch_size: int, device: str, pad_to_multiple_of: int = 1
) -> list[dict[str, torch.Tensor]]:
    """`items` taken `batch_size` at a time in `order`, collated as titlegen trains (`data.Collator`), on `device`."""
    from titlegen.data.collate import Collator
    from titlegen.data.tokenization import chat_tokens, load_tokenizer

    pad_id = chat_tokens(load_tokenizer(str(model_dir))).pad_id
    collate = Collator(pad_id, for_generation=False, pad_to_multiple_of=pad_to_multiple_of)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [{k: v.to(device) for k, v in collate([(i, items[i]) for i in c]).items()} for c in chunks]


def lora_training_model(model_dir: Path, scope: Any, checkpointing: Any, device: str) -> Any:
    """The benchmark's model with LoRA r=16 (alpha 16, no dropout) on the default modules, in training mode."""
    from titlegen.model import loading, lora

    base = loading.load_base_model(str(model_dir), MAX_SEQ_LENGTH, {"": 0} if device == "cuda" else "sequential")
    model = lora.apply_lora(base, scope, 16, 16, 0.0, lora.DEFAULT_TARGET_MODULES, checkpointing, 3407)
    lora.training_mode(model)
    return model


def git_commit(directory: Path) -> str | None:
    """The commit checked out in `directory` ("+dirty" when tracked files differ from it), or None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


class Stopwatch:
    """Wall time between GPU-synchronised points, the peak memory since `start`, and per-step laps.

    Laps are host-side (no sync per step), so a step that triggers a torch.compile recompilation shows as a long
    lap; `compiles` counts the graphs compiled inside the timed window, which a warmed-up run should keep at 0.
    """

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.elapsed = 0.0
        self._t0 = 0.0
        self.laps: list[float] = []
        self.compiles = 0
        self._graphs_at_start = 0
        self._last = 0.0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @staticmethod
    def _graphs() -> int:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    def start(self) -> None:
        self._sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._graphs_at_start = self._graphs()
        self.laps = []
        self._t0 = self._last = time.perf_counter()

    def lap(self) -> None:
        now = time.perf_counter()
        self.laps.append(now - self._last)
        self._last = now

    def stop(self) -> float:
        self._sync()
        now = time.perf_counter()
        if self.laps:  # the GPU work still queued belongs to the last step: the laps add up to the elapsed time
            self.laps[-1] += now - self._last
        self.elapsed = now - self._t0
        self.compiles = self._graphs() - self._graphs_at_start
        return self.elapsed

    @property
    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else 0.0

    def details(self) -> dict[str, Any]:
        laps = sorted(self.laps) or [0.0]
        return {
            "compiles_while_timed": self.compiles,
            "step_ms_median": round(1000 * laps[len(laps) // 2], 1),
            # CUDA graphs' replays allocate nothing the allocator counts, so their memory shows here, not in peak_gib.
            "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if self.cuda else 0.0,
            "step_ms_max": round(1000 * laps[-1], 1),
        }


def emit(result: dict[str, Any], path: str | None) -> None:
    """Print one JSON line (the driver reads it) and optionally write it to a file."""
    line = json.dumps(result)
    print("BENCH_RESULT " + line, flush=True)
    if path:
        Path(path).write_text(line + "\n")
