"""Scoring titles and writing a test run's outputs: per-sample scores in predictions.jsonl, their means in
metrics.json. BERTScore is the primary metric; ROUGE-L, length, copy rate and stop rate explain it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titlegen.metrics import BERTScoreMetric
from titlegen.textmetrics import copies_opening, rouge_l, words


@dataclass
class Scored:
    """Per-sample rows (sorted by id) and their means; `encoder` describes the BERTScore encoder."""

    rows: list[dict[str, Any]]
    means: dict[str, float]
    encoder: dict[str, Any]


def score_generations(generations: list[dict[str, Any]], bertscore: BERTScoreMetric) -> Scored:
    """Score titles (dicts with id, abstract, reference, generated, stopped) against their references.

    `stopped` is None for titles that no model generated (the first-sentence baseline): they do not count in the stop
    rate, which is then absent.
    """
    generations = sorted(generations, key=lambda g: g["id"])
    generated = [g["generated"] for g in generations]
    references = [g["reference"] for g in generations]
    result = bertscore.score([g["id"] for g in generations], generated, references)
    rouge = rouge_l(generated, references)
    rows = []
    for i, g in enumerate(generations):
        rows.append({
            **g,
            **{f"bertscore_{name}": result.per_sample[name][i] for name in ("precision", "recall", "f1")},
            "rouge_l": rouge[i],
            "title_words": len(words(g["generated"])),
            "copied": copies_opening(g["generated"], g["abstract"]),
        })  # fmt: skip
    n = len(rows)
    means = {
        "bertscore_f1": result.f1,
        "bertscore_precision": result.precision,
        "bertscore_recall": result.recall,
        "rouge_l": sum(rouge) / n,
        "title_words": sum(r["title_words"] for r in rows) / n,
        "copy_rate": sum(r["copied"] for r in rows) / n,
    }
    stops = [r["stopped"] for r in rows if r["stopped"] is not None]
    if stops:
        means["stop_rate"] = sum(stops) / len(stops)
    return Scored(rows=rows, means=means, encoder=result.encoder)


def write_test_outputs(out_dir: Path, scored: Scored, summary: dict[str, Any]) -> None:
    """predictions.jsonl (one row per title, every score) and metrics.json (`summary` with the means and encoder)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for row in scored.rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {**summary, "samples": len(scored.rows), "bertscore": scored.encoder}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
