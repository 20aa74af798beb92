"""Shared pieces of the benchmarks: the Qwen2.5-0.5B-shaped model, the samples, and GPU timing."""

from __future__ import annotations

import json
import random
import sys
import time
import warnings
from collections import Counter
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


def config_value(scope: str, section: str, key: str, default: Any) -> Any:
    """`section.key` as the experiment config of `scope` sets it, else `default` (the code default it inherits)."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / SCOPE_CONFIGS[scope]).read_text())
    return (config.get(section) or {}).get(key, default)


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


class HostSyncs:
    """Counts the host's waits for the GPU (`torch.cuda.set_sync_debug_mode`), by the Python lines that caused them.

    A wait empties the GPU's queue: until the host has queued the next kernels, the GPU idles. Implicit waits only
    (`.item()`, `bool()` of a GPU tensor, a blocking copy); an explicit `torch.cuda.synchronize()` is not counted.
    """

    SKIP = ("site-packages/torch/", "/warnings.py", "benchmarks/common.py")  # frames that say where, not why

    def __init__(self) -> None:
        self.sites: Counter[str] = Counter()
        self._catch: Any = None

    def start(self) -> None:
        if not torch.cuda.is_available():
            return
        self._show = warnings.showwarning  # other warnings still show, once each, as before
        self._shown: set[tuple[str, int, str]] = set()
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._record
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if self._catch is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(None, None, None)
        self._catch = None

    def _record(self, message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
        if "synchronizing" not in str(message):
            if (filename, lineno, str(message)) not in self._shown:
                self._shown.add((filename, lineno, str(message)))
                self._show(message, category, filename, lineno, *rest)
            return
        frames, frame = [], sys._getframe(1)
        while frame is not None and len(frames) < 4:
            name = frame.f_code.co_filename
            if not any(s in name for s in self.SKIP):
                frames.append(f"{'/'.join(Path(name).parts[-2:])}:{frame.f_lineno}")
            frame = frame.f_back
        self.sites[" < ".join(frames)] += 1

    def details(self) -> dict[str, Any]:
        return {"host_syncs": sum(self.sites.values()), "host_sync_sites": dict(self.sites.most_common(6))}


class Stopwatch:
    """Wall time between GPU-synchronised points, the peak memory since `start`, and per-step laps.

    Laps are host-side (no sync per step), so a step that triggers a torch.compile recompilation shows as a long
    lap; `compiles` counts the graphs compiled inside the timed window, which a warmed-up run should keep at 0.
    The host's waits for the GPU inside the window are counted (`HostSyncs`).
    """

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.elapsed = 0.0
        self._t0 = 0.0
        self.laps: list[float] = []
        self.compiles = 0
        self._graphs_at_start = 0
        self._last = 0.0
        self.syncs = HostSyncs()
        self._allocator_at_start: dict[str, float] = {}
        self.allocator: dict[str, float] = {}

    def _allocator_counts(self) -> dict[str, float]:
        """Pool growth: new pinned host blocks (and the ms spent creating them), cudaMalloc calls, and retries after a
        failed one (each frees the cache and waits for the GPU). Growth inside the timed window costs the host."""
        if not self.cuda:
            return {}
        device = torch.cuda.memory_stats()
        counts = {
            "cuda_mallocs": device.get("num_device_alloc", 0),
            "alloc_retries": device.get("num_alloc_retries", 0),
        }
        host = torch.cuda.host_memory_stats() if hasattr(torch.cuda, "host_memory_stats") else {}
        if "num_host_alloc" in host:
            counts.update(pinned_allocs=host["num_host_alloc"], pinned_alloc_ms=host["host_alloc_time.total"] / 1000)
        return counts

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
        self._allocator_at_start = self._allocator_counts()
        self.syncs.start()
        self._t0 = self._last = time.perf_counter()

    def lap(self) -> None:
        now = time.perf_counter()
        self.laps.append(now - self._last)
        self._last = now

    def stop(self) -> float:
        self.syncs.stop()
        self._sync()
        now = time.perf_counter()
        if self.laps:  # the GPU work still queued belongs to the last step: the laps add up to the elapsed time
            self.laps[-1] += now - self._last
        self.elapsed = now - self._t0
        self.compiles = self._graphs() - self._graphs_at_start
        end = self._allocator_counts()
        self.allocator = {f"{k}_while_timed": round(v - self._allocator_at_start[k], 1) for k, v in end.items()}
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
            **self.syncs.details(),
            **self.allocator,
        }


def nonzero_lora_b(model: torch.nn.Module) -> None:
    """Random LoRA B weights: at their initial zero every A gradient is zero, and a gradient check proves nothing."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)


def loss_and_lora_grads(model: torch.nn.Module, loss: Any) -> tuple[float, dict[str, torch.Tensor]]:
    """Backpropagate `loss()` from zeroed gradients; its value and a float copy of every trainable gradient."""
    model.zero_grad(set_to_none=True)
    value = loss()
    value.backward()
    return value.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


def largest_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest |a - b| / |b| (by norm) over the tensors of `b`."""
    return max(float((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-30)) for n in b)


def emit(result: dict[str, Any], path: str | None) -> None:
    """Print one JSON line (the driver reads it) and optionally write it to a file."""
    line = json.dumps(result)
    print("BENCH_RESULT " + line, flush=True)
    if path:
        Path(path).write_text(line + "\n")
