"""Reading summary.md back: its sections and the cells of a table row."""

from __future__ import annotations

import re


def section(text: str, heading: str | None) -> str:
    """The text under `## heading` up to the next `## `; the part before the first one for None."""
    if heading is None:
        return text.split("\n## ", 1)[0]
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_row(text: str, first_cells: str) -> list[str]:
    """The cells of the first table row that starts with `first_cells` (one cell, or several joined by " | ")."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cells} |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def interval(cell: str) -> tuple[float, ...]:
    """`mean [low, high]` as three numbers."""
    return tuple(map(float, re.fullmatch(r"([-+\d.]+) \[([-+\d.]+), ([-+\d.]+)\]", cell).groups()))


def assert_tables_well_formed(text: str) -> int:
    """Every markdown table row has as many cells as its header; returns the number of tables."""
    tables = 0
    width = None
    for line in text.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        cells = len(re.split(r"(?<!\\)\|", line.strip().strip("|")))
        if width is None:
            width, tables = cells, tables + 1
        assert cells == width, f"{cells} cells where the header has {width}: {line}"
    return tables
