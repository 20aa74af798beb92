"""Per-title measures beside BERTScore: ROUGE-L against the reference, length in words, and whether a title copies
the abstract's opening (the failure a title model falls into when it cannot summarise)."""

from __future__ import annotations

import re

_WORD = re.compile(r"[0-9A-Za-z]+")
# Words a title must share with the abstract's opening, from its first word on, to count as a copy.
COPY_WORDS = 4


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words: punctuation, case and spacing do not make two titles different."""
    return [w.lower() for w in _WORD.findall(text)]


def rouge_l(generated: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F-measure of each title against its reference (torchmetrics' implementation, no stemming)."""
    from torchmetrics.functional.text.rouge import rouge_score

    return [
        float(rouge_score(g, r, rouge_keys="rougeL")["rougeL_fmeasure"]) if g.strip() else 0.0
        for g, r in zip(generated, references, strict=True)
    ]


def copies_opening(title: str, abstract: str, min_words: int = COPY_WORDS) -> bool:
    """Whether the title's first words are the abstract's first words: all of them for a title shorter than
    `min_words`, else its first `min_words`."""
    title_words, abstract_words = words(title), words(abstract)
    n = min(len(title_words), min_words)
    return n > 0 and title_words[:n] == abstract_words[:n]
