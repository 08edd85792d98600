"""Output: tables (rich; plain and greppable when stdout is not a terminal), JSON and YAML."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text
from ruamel.yaml import YAML
from ruamel.yaml.representer import RoundTripRepresenter

Row = Sequence[str]
Column = tuple[str, Callable[[dict[str, Any]], object]]


def cell(value: object) -> str:
    """Booleans as yes/no; empty or missing as ``-``; lists comma-joined; maps as JSON."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True) if value else "-"
    return str(value)


def dig(obj: object, *path: str) -> object:
    """``obj[path[0]][path[1]]...``, or None where a step is missing."""
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def rows_of(items: Sequence[dict[str, Any]], columns: Sequence[Column]) -> list[list[str]]:
    return [[cell(get(item)) for _, get in columns] for item in items]


def _table(headers: Sequence[str], rows: Sequence[Row], *, tty: bool) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD if tty else None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1) if tty else (0, 2, 0, 0),
        header_style="bold" if tty else "",
    )
    for name in headers:
        table.add_column(name, no_wrap=True, overflow="ignore" if not tty else "ellipsis")
    for row in rows:
        table.add_row(*(Text(v) for v in row))
    return table


def table_text(headers: Sequence[str], rows: Sequence[Row]) -> str:
    """The table for a pipe or a file: no borders, no colour, never wrapped, no trailing
    spaces, so ``grep`` and ``awk`` work on it."""
    widths = [max([cell_len(h), *(cell_len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=max(sum(widths) + 2 * len(widths) + 8, 80),
        force_terminal=False,
        no_color=True,
        highlight=False,
        soft_wrap=False,
    )
    console.print(_table(headers, rows, tty=False))
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


def print_table(headers: Sequence[str], rows: Sequence[Row]) -> None:
    if sys.stdout.isatty():
        Console(highlight=False).print(_table(headers, rows, tty=True))
    else:
        sys.stdout.write(table_text(headers, rows))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class _Representer(RoundTripRepresenter):
    """Round-trip output that spells ``null`` out instead of leaving the value empty."""

    def represent_none(self, data: None) -> Any:
        return self.represent_scalar("tag:yaml.org,2002:null", "null")


_Representer.add_representer(type(None), _Representer.represent_none)


def to_yaml(data: Any) -> str:
    """Block-style YAML, keys in the order given."""
    yaml = YAML(typ="rt")
    yaml.Representer = _Representer
    yaml.default_flow_style = False
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()
