"""Small tables for summaries and server lists: rich when on a terminal, aligned text otherwise."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TextIO

from attrs import frozen

__all__ = ["Table", "rich_available", "render_tables"]


def rich_available() -> bool:
    """Whether rich (the ``cli`` extra) is installed."""
    return importlib.util.find_spec("rich") is not None


@frozen
class Table:
    """A titled table of text cells; an all-empty header row is not shown."""

    title: str
    headers: tuple[str, ...]
    rows: Sequence[Sequence[str]]


def render_tables(tables: Sequence[Table], stream: TextIO, *, fancy: bool) -> None:
    """Print tables to ``stream``, with rich when ``fancy`` (and installed)."""
    if fancy and rich_available():
        _render_rich(tables, stream)
        return
    for table in tables:
        stream.write(_plain(table))
    stream.flush()


def _plain(table: Table) -> str:
    show_headers = any(table.headers)
    rows = [tuple(table.headers)] if show_headers else []
    rows += [tuple(row) for row in table.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.headers))] if rows else []
    lines = [table.title]
    for n, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append(("  " + "  ".join(cells)).rstrip())
        if show_headers and n == 0:
            lines.append("  " + "  ".join("-" * width for width in widths))
    return "\n".join(lines) + "\n\n"


def _render_rich(tables: Sequence[Table], stream: TextIO) -> None:
    from rich.console import Console  # noqa: PLC0415 - rich is optional (the cli extra)
    from rich.table import Table as RichTable  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    console = Console(file=stream, highlight=False)
    for table in tables:
        show_headers = any(table.headers)
        rich_table = RichTable(
            title=Text(table.title), show_header=show_headers, title_justify="left"
        )
        for n, header in enumerate(table.headers):
            rich_table.add_column(header, justify="left" if n == 0 else "right")
        for row in table.rows:
            rich_table.add_row(*(Text(cell) for cell in row))
        console.print(rich_table)
