"""Building the train/validation/test splits: cleaning, deduplication, a seeded split, and a manifest.

The project never ships data: `prepare_splits` builds the splits from a source at run time (a local JSONL of
arXiv-style records, or a Hugging Face dataset id streamed and sampled) and writes a manifest so that a second run
with the same source and settings reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from titlegen.data.records import MAX_LISTED, read_pairs
from titlegen.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
# Bump when cleaning or splitting changes, so that old splits are rebuilt instead of silently reused.
SPLIT_VERSION = 1


def normalize(text: str) -> str:
    """Whitespace collapsed."""
    return " ".join(text.split())


def title_key(title: str) -> str:
    """Key for deduplication: case, punctuation and spacing do not make two titles different."""
    return re.sub(r"[^0-9a-z]+", "", title.lower())


def check_split_files(paths: dict[str, Path], needed: Iterable[str]) -> None:
    """Read every split file a stage needs and report all their problems in one `DataError`; warn about titles
    that are in two splits (a test title seen in training inflates the test score). Reads no model or tokenizer.
    """
    records: dict[str, list[dict[str, str]]] = {}
    errors: list[str] = []
    for split in needed:
        try:
            records[split] = read_pairs(paths[split])
        except DataError as err:
            errors.append(f"data split {split!r}: {err}")
    if errors:
        raise DataError("\n".join(errors))
    for split, path in paths.items():
        if split not in records and Path(path).is_file():
            try:
                records[split] = read_pairs(path)
            except DataError:
                pass  # not needed by this stage: reported by the stage that reads it
    first_seen: dict[str, tuple[str, str]] = {}
    repeated: list[str] = []
    for split, rows in records.items():
        for row in rows:
            key = title_key(row["title"])
            seen = first_seen.setdefault(key, (split, row["id"]))
            if seen[0] != split:
                repeated.append(
                    f"{row['title'][:80]!r}: {paths[seen[0]]} (id {seen[1]!r}) and {paths[split]} (id {row['id']!r})"
                )
    if repeated:
        more = f"\n  ... and {len(repeated) - MAX_LISTED} more" if len(repeated) > MAX_LISTED else ""
        log.warning(
            "%d title(s) are in two splits, so scores on the later split are inflated:\n  %s%s\nFix: remove each"
            " from one of the files (splits that prepare_splits builds never share a title).",
            len(repeated), "\n  ".join(repeated[:MAX_LISTED]), more,
        )  # fmt: skip


@dataclass(frozen=True)
class SplitSettings:
    """What the splits depend on; stored in the manifest and compared before reuse."""

    source: str
    source_hash: str
    seed: int = 20261125
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    max_samples: int | None = None
    title_words: tuple[int, int] = (3, 30)
    abstract_words: tuple[int, int] = (30, 500)
    version: int = SPLIT_VERSION


def clean_and_dedupe(records: Iterable[dict[str, str]], settings: SplitSettings) -> list[dict[str, str]]:
    """Collapse whitespace, keep titles/abstracts within the word limits, drop repeated titles (first kept)."""
    seen: set[str] = set()
    kept: list[dict[str, str]] = []
    for record in records:
        title, abstract = normalize(record["title"]), normalize(record["abstract"])
        if not settings.title_words[0] <= len(title.split()) <= settings.title_words[1]:
            continue
        if not settings.abstract_words[0] <= len(abstract.split()) <= settings.abstract_words[1]:
            continue
        key = title_key(title)
        if key in seen:
            continue
        seen.add(key)
        kept.append({"id": str(record["id"]), "title": title, "abstract": abstract})
    return kept


def split_records(records: list[dict[str, str]], settings: SplitSettings) -> dict[str, list[dict[str, str]]]:
    """Shuffle with the seed and cut into train/validation/test; titles are unique, so no title is in two splits."""
    order = list(records)
    random.Random(settings.seed).shuffle(order)
    if settings.max_samples is not None:
        order = order[: settings.max_samples]
    n_val = max(1, round(len(order) * settings.validation_fraction))
    n_test = max(1, round(len(order) * settings.test_fraction))
    if len(order) < n_val + n_test + 1:
        raise DataError(
            f"{settings.source}: only {len(order)} usable record(s) after cleaning; need at least {n_val + n_test + 1}."
            " Fix: use a larger source."
        )
    return {"validation": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stream_hub_dataset(dataset_id: str, limit: int, seed: int) -> Iterator[dict[str, str]]:
    """Stream a Hugging Face dataset and yield a shuffled sample of `limit` records (needs network)."""
    from datasets import load_dataset  # imported here: only the online path needs it

    stream = load_dataset(dataset_id, split="train", streaming=True).shuffle(seed=seed, buffer_size=10_000)
    for number, row in enumerate(stream.take(limit)):
        if isinstance(row.get("title"), str) and isinstance(row.get("abstract"), str):
            yield {
                "id": str(row.get("id") or f"{dataset_id}:{number}"),
                "title": row["title"],
                "abstract": row["abstract"],
            }


def load_source(source: str, hub_samples: int, seed: int) -> tuple[list[dict[str, str]], str]:
    """Records and a fingerprint of the source: a local JSONL file, or else a Hugging Face dataset id."""
    if os.path.exists(source) or source.endswith(".jsonl"):
        return read_pairs(source), file_sha256(source)
    if source.count("/") != 1:
        raise DataError(
            f"data.source={source!r} is neither an existing file nor a Hugging Face dataset id (owner/name)."
            " Fix: pass a JSONL path, e.g. --data.source ../shared/datasets/arxiv/pairs.jsonl"
        )
    try:
        records = list(_stream_hub_dataset(source, hub_samples, seed))
    except OSError as err:  # datasets' errors for an unreachable hub (ConnectionError) or an unknown id
        raise DataError(
            f"data.source={source!r}: the Hugging Face dataset could not be read ({str(err).splitlines()[0][:200]})."
            " Fix: check the network and the id, or pass --data.source with a local JSONL of abstract/title records."
        ) from err
    return records, _hub_fingerprint(source, hub_samples, seed)


def _hub_fingerprint(dataset_id: str, hub_samples: int, seed: int) -> str:
    return f"hub:{dataset_id}:sample={hub_samples}:seed={seed}"


def prepare_splits(
    source: str, out_dir: Path | str, hub_samples: int = 20_000, max_samples: int | None = None, seed: int = 20261125
) -> dict[str, Path]:
    """Build (or reuse) `out_dir/{train,validation,test}.jsonl` and the manifest; return the split paths."""
    out_dir = Path(out_dir)
    paths = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    manifest_path = out_dir / MANIFEST
    source_hash = file_sha256(source) if os.path.isfile(source) else _hub_fingerprint(source, hub_samples, seed)
    if manifest_path.is_file() and all(p.is_file() for p in paths.values()):
        stored = json.loads(manifest_path.read_text()).get("settings", {})
        wanted = json.loads(json.dumps(asdict(SplitSettings(str(source), source_hash, seed, max_samples=max_samples))))
        # The content hash decides, not the path: the same file reached by another relative path is the same source.
        if {**stored, "source": None} == {**wanted, "source": None}:
            log.info("Reusing the splits in %s (manifest matches the source and settings).", out_dir)
            return paths
    records, fingerprint = load_source(source, hub_samples, seed)
    settings = SplitSettings(source=str(source), source_hash=fingerprint, seed=seed, max_samples=max_samples)
    splits = split_records(clean_and_dedupe(records, settings), settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        tmp = paths[split].with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        tmp.replace(paths[split])
    manifest = {
        "settings": asdict(settings),
        "records_read": len(records),
        "counts": {split: len(rows) for split, rows in splits.items()},
        "sha256": {split: file_sha256(paths[split]) for split in SPLITS},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("Wrote splits to %s: %s", out_dir, manifest["counts"])
    return paths
