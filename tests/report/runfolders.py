"""Run folders as `main.py fit` and `main.py test` leave them, written by hand: metrics.json, predictions.jsonl,
hparams.yaml, config.yaml and TensorBoard event files, with scores the tests choose."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import yaml

MEANS = ("bertscore_f1", "bertscore_precision", "bertscore_recall", "rouge_l", "title_words", "copy_rate", "stop_rate")


def write_fit_run(logs: Path, run_dir: Path, seed: int | None, learning_rate: float = 2e-4, lora_r: int = 16,
                  lora_alpha: int = 32, scope: str = "all", max_epochs: int = 2, max_steps: int = -1,
                  batch_size: int = 8, accumulate: int = 1) -> str:  # fmt: skip
    """A fit run's folder with its hparams.yaml, config.yaml and a last.ckpt; returns the checkpoint's path as
    metrics.json records it (relative, as seen from the directory that holds the logs)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    hparams = {"learning_rate": learning_rate, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_scope": scope,
               "batch_size": batch_size, "generation": "greedy"}  # fmt: skip
    (run_dir / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    config = {"seed_everything": seed,
              "trainer": {"max_epochs": max_epochs, "max_steps": max_steps, "accumulate_grad_batches": accumulate},
              "data": {"batch_size": batch_size}, "model": {"learning_rate": learning_rate}}  # fmt: skip
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return str(Path("lightning_logs") / run_dir.relative_to(logs) / "checkpoints" / "last.ckpt")


def write_fit_events(run_dir: Path, start: float, seconds: float, tokens_per_sec: list[float], peak_gib: list[float],
                     val_f1: dict[int, float], suffix: str) -> None:  # fmt: skip
    """One process's event file, as a fit (or a resumed fit) writes it: trainable params first, then steps."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir), filename_suffix=suffix)
    writer.add_scalar("model/trainable_params", 1000.0, 0, walltime=start)
    for i, (tps, peak) in enumerate(zip(tokens_per_sec, peak_gib, strict=True)):
        writer.add_scalar("perf/tokens_per_sec", tps, 10 * i + 9, walltime=start + 10 * (i + 1))
        writer.add_scalar("perf/peak_memory_gib", peak, 10 * i + 9, walltime=start + 10 * (i + 1))
    for i, (step, f1) in enumerate(val_f1.items()):
        wall = start + seconds * (i + 1) / len(val_f1)
        writer.add_scalar("val/bertscore_f1", f1, step, walltime=wall)
        writer.add_scalar("val/loss", 3.0 - f1, step, walltime=wall)
    writer.close()


def per_title(ids: list[str], f1: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every per-title measure: the given F1, the others drawn around it (rates as 0/1, words as integers)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    return {
        "bertscore_f1": np.asarray(f1, dtype=float),
        "bertscore_precision": np.clip(f1 + rng.normal(0.02, 0.05, n), 0, 1),
        "bertscore_recall": np.clip(f1 + rng.normal(-0.02, 0.05, n), 0, 1),
        "rouge_l": rng.uniform(0, 0.6, n),
        "title_words": rng.integers(4, 15, n).astype(float),
        "copy_rate": (rng.uniform(size=n) < 0.2).astype(float),
        "stop_rate": (rng.uniform(size=n) < 0.9).astype(float),
    }


def write_test_run(run_dir: Path, ids: list[str], scores: dict[str, np.ndarray], title: str,
                   checkpoint: str | None, trainable: int = 0, titles: str = "generated",
                   decoding: dict | None = None, scope: str = "all", old: bool = False) -> dict:  # fmt: skip
    """A test run's metrics.json (means of the per-title scores) and predictions.jsonl (rows in shuffled order: the
    report must not depend on it). `old`: only BERTScore F1, as runs made before the other measures existed."""
    run_dir.mkdir(parents=True)
    rows = []
    for i, sample_id in enumerate(ids):
        row = {"id": sample_id, "reference": f"reference {sample_id}", "generated": f"{title} {sample_id}",
               "abstract": f"abstract of {sample_id} " + "word " * 150}  # fmt: skip
        row["bertscore_f1"] = float(scores["bertscore_f1"][i])
        if not old:
            row.update({name: float(scores[name][i]) for name in ("bertscore_precision", "bertscore_recall",
                                                                  "rouge_l", "title_words")})  # fmt: skip
            row["copied"] = bool(scores["copy_rate"][i])
            row["stopped"] = None if titles == "first_sentence" else bool(scores["stop_rate"][i])
        rows.append(row)
    random.Random(0).shuffle(rows)
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = ("bertscore_f1",) if old else tuple(m for m in MEANS if not (m == "stop_rate" and titles != "generated"))
    metrics = {f"test/{name}": float(np.mean(scores[name])) for name in names}
    summary = {"metrics": metrics, "samples": len(ids), "checkpoint": checkpoint}
    if not old:
        summary.update({"model_name": "tiny", "trainable_params": trainable, "titles": titles, "lora_scope": scope,
                        "bertscore": {"hash": "minilm_L6"},
                        "decoding": decoding or {"strategy": "greedy", "num_beams": 4} if titles == "generated"
                        else None})  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(summary))
    return summary
