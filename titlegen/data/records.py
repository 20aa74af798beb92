"""Every reader of the project's input files, each problem reported with file:line: abstract/title pairs (JSONL)
for training and evaluation, and abstracts to title with `predict` (JSONL, or text with one abstract a line)."""

from __future__ import annotations

import json
from pathlib import Path

from titlegen.errors import DataError

MAX_LISTED = 20  # problems listed in one error; the rest are counted


def problem_report(path: Path | str, problems: list[str], fix: str) -> DataError:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return DataError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more + f"\nFix: {fix}")


def read_utf8_lines(path: Path) -> list[str]:
    """The file's lines; a byte sequence that is not UTF-8 is a `DataError` naming file:line."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 ({err.reason}). Fix: re-encode the file as UTF-8.") from err


def read_pairs(path: Path | str) -> list[dict[str, str]]:
    """Read a JSONL file of records with string `abstract` and `title` (and optional `id`).

    Every bad line is collected and reported in one `DataError` naming file:line, the value and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file. Fix: pass an existing JSONL file (one JSON object a line).")
    records: list[dict[str, str]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(read_utf8_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON ({err.msg}): {line[:60]!r}")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            continue
        for field in ("abstract", "title"):
            value = record.get(field)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{path}:{number}: field {field!r} must be a non-empty string, got {value!r:.60}")
        if record.get("id") in (None, ""):
            record["id"] = f"{path.stem}:{number}"
        record["id"] = str(record["id"])
        if record["id"] in first_line:
            # Evaluation gathers and de-duplicates samples by id, so two samples must never share one.
            problems.append(f"{path}:{number}: id {record['id']!r} already used on line {first_line[record['id']]}")
        first_line.setdefault(record["id"], number)
        records.append(record)
    if problems:
        raise problem_report(path, problems, "correct or remove these lines.")
    if not records:
        raise DataError(f"{path}: the file holds no records. Fix: give a JSONL file with `abstract` and `title`.")
    return records


def read_abstracts(path: Path | str) -> list[dict[str, str]]:
    """Records with `id`, `abstract` and `title` ("" when the input has none) from a `.txt` or JSONL file.

    A `.txt` file holds one abstract a line (id `<file stem>:<line>`); any other name is read as JSONL, where
    `title`, if present, is kept as the reference. Every bad line is reported at once, with file:line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f'data.predict_file={str(path)!r}: no such file. Fix: give a JSONL file of {{"abstract": ...}} objects'
            " or a .txt file with one abstract a line."
        )
    lines = read_utf8_lines(path)
    records: list[dict[str, str]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            record: object = {"abstract": line.strip()}
        else:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(
                    f"{path}:{number}: not valid JSON ({err.msg}): {line[:60]!r}; plain text needs a .txt file name"
                )
                continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            continue
        abstract, title = record.get("abstract"), record.get("title", "")
        if not isinstance(abstract, str) or not abstract.strip():
            problems.append(f"{path}:{number}: field 'abstract' must be a non-empty string, got {abstract!r:.60}")
        if not isinstance(title, str | None):
            problems.append(f"{path}:{number}: field 'title' (optional) must be a string, got {title!r:.60}")
        sample_id = str(record["id"]) if record.get("id") not in (None, "") else f"{path.stem}:{number}"
        if sample_id in first_line:
            problems.append(f"{path}:{number}: id {sample_id!r} already used on line {first_line[sample_id]}")
        first_line.setdefault(sample_id, number)
        records.append({"id": sample_id, "abstract": str(abstract), "title": title or ""})
    if problems:
        raise problem_report(path, problems, "correct or remove these lines.")
    if not records:
        raise DataError(f"{path}: the file holds no abstracts. Fix: give at least one non-empty line.")
    return records
