"""Reading the report pages' Markdown tables cell by cell, whatever padding the table writer aligns them with."""

from __future__ import annotations


def table_rows(page: str) -> list[list[str]]:
    """Every row of every pipe table of `page` as its stripped cells, the header rows included, separators left out."""
    rows = []
    for line in page.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows
