"""Abstracts to title with `predict`: a JSONL file (`abstract`, optional `id` and `title`) or text, one a line."""

from __future__ import annotations

import json
from pathlib import Path

from titlegen.splits import DataError, _problem_report, read_utf8_lines


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
        raise _problem_report(path, problems, "correct or remove these lines.")
    if not records:
        raise DataError(f"{path}: the file holds no abstracts. Fix: give at least one non-empty line.")
    return records
