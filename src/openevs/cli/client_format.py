"""How client commands print results: the formats, the columns, `-c` and `--long`.

Every resource family describes its objects once, as a `Shape`: the columns
of its list (a few by default, every one with `--long`) and the fields of
its object as the API returns it. From that, a list or one object is shown
the way openstackclient shows them:

- `table` (for people): a list in columns, one object as a Field/Value table;
- `json` / `yaml`: the API's objects as they came, or only the `-c` keys;
- `value`: space-separated values, one row (or, for one object, one field)
  per line, no header;
- `csv`: a header row, then quoted values (numbers unquoted).

Rules this module keeps: an id is never broken across lines. A column that
holds ids is `no_wrap` and holds one id per line; the default columns of
every family fit an 80-column terminal with a 36-character UUID; a table
that cannot keep its ids whole in the terminal is printed wider than the
terminal rather than cutting one. `-c` names are checked before any
request is sent: an unknown one is a usage error (exit 2) that lists the
valid names.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

import typer
import yaml
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.segment import Segment, Segments
from rich.table import Table
from rich.text import Text

out = Console()
err = Console(stderr=True)

# How narrow a wrappable column may get before a table is printed wider than
# the terminal (to keep the ids whole), and how wide such columns then are.
SQUEEZED_COLUMN_W = 4
WIDENED_COLUMN_W = 16
COLUMN_GAP_W = 3  # rich's SIMPLE_HEAD box: padding, a blank separator, padding


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"
    value = "value"
    csv = "csv"


FormatOption = Annotated[
    OutputFormat,
    typer.Option(
        "--format", "-f",
        help="table (for people); json or yaml (the API's objects, or only the -c fields); "
        "value (space-separated values, one per line for one object, no header) or csv (for scripts).",
    ),
]
LongOption = Annotated[bool, typer.Option("--long", help="Show every column (wider than 80 columns).")]


@dataclass(frozen=True)
class Column:
    """One column of a list: its header, the API key it shows, how to read it.

    `render` gives the cell's value from the whole object (default: the key's
    value); a list is one line per item in a table. `ids` marks a column of
    ids, `wrap=False` one of short words (a status): neither is ever wrapped.
    `long` marks a column shown only with `--long` (or `-c`).
    """

    header: str
    key: str
    render: Callable[[dict[str, Any]], Any] | None = None
    ids: bool = False
    long: bool = False
    wrap: bool = True

    @property
    def no_wrap(self) -> bool:
        return self.ids or not self.wrap

    def value(self, obj: Mapping[str, Any]) -> Any:
        return self.render(dict(obj)) if self.render is not None else obj.get(self.key)


@dataclass(frozen=True)
class Shape:
    """How one kind of API object is shown.

    columns: the list's columns, default ones first. fields: the keys of the
    API's object (what `show -c` accepts besides the column names); cells:
    how some fields read in a Field/Value table, e.g. a comma-joined string of
    ids as one id per line.
    """

    what: str
    columns: tuple[Column, ...]
    fields: tuple[str, ...]
    cells: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    def column_option(self) -> Any:
        """`-c COLUMN` of a list command, its help naming the columns."""
        default = ", ".join(c.header for c in self.columns if not c.long)
        more = ", ".join(c.header for c in self.columns if c.long)
        return typer.Option(
            "--column", "-c", metavar="COLUMN",
            help=f"Show this column (repeatable, in the order given): {default}; with --long also "
            f"{more}. Any case; a column's key in -f json works too.",
        )

    def field_option(self) -> Any:
        """`-c FIELD` of a command that prints one object."""
        return typer.Option(
            "--column", "-c", metavar="FIELD",
            help=f"Show only this field of the {self.what} (repeatable, in the order given), "
            "e.g. -c id -c status: a key of its -f json, or a list column's name.",
        )


def _norm(name: str) -> str:
    return name.strip().casefold().replace(" ", "_").replace("-", "_")


def _unknown(kind: str, name: str, valid: Iterable[str]) -> typer.BadParameter:
    return typer.BadParameter(f"unknown {kind} {name!r}; choose from: {', '.join(valid)}",
                              param_hint="'-c' / '--column'")


@dataclass(frozen=True)
class ListView:
    """What a list command prints: the format and the chosen columns."""

    fmt: OutputFormat
    columns: tuple[Column, ...]
    picked: bool  # -c given: json and yaml keep only these keys


@dataclass(frozen=True)
class ObjectView:
    """What a command that prints one object shows: the format and the -c fields."""

    fmt: OutputFormat
    keys: tuple[str, ...] | None  # None: every field
    shape: Shape


def list_view(shape: Shape, fmt: OutputFormat, names: Sequence[str] | None = None,
              long: bool = False) -> ListView:
    """The columns for `-c` names (in their order) or `--long`; BadParameter for an unknown name."""
    if not names:
        columns = shape.columns if long else tuple(c for c in shape.columns if not c.long)
        return ListView(fmt, columns, picked=False)
    by_name: dict[str, Column] = {}
    for col in shape.columns:
        by_name.setdefault(_norm(col.key), col)
        by_name[_norm(col.header)] = col
    picked = []
    for name in names:
        found = by_name.get(_norm(name))
        if found is None:
            raise _unknown("column", name, (c.header for c in shape.columns))
        picked.append(found)
    return ListView(fmt, tuple(picked), picked=True)


def object_view(shape: Shape, fmt: OutputFormat, names: Sequence[str] | None = None) -> ObjectView:
    """The fields for `-c` names: keys of the object or list column names; BadParameter if unknown."""
    if not names:
        return ObjectView(fmt, None, shape)
    keys = {_norm(key): key for key in shape.fields}
    for col in shape.columns:
        keys.setdefault(_norm(col.header), col.key)
        keys.setdefault(_norm(col.key), col.key)
    picked = []
    for name in names:
        key = keys.get(_norm(name))
        if key is None:
            raise _unknown("field", name, shape.fields)
        picked.append(key)
    return ObjectView(fmt, tuple(picked), shape)


# -- cells ----------------------------------------------------------------------


def table_text(value: Any) -> str:
    """A cell for people: '-' for nothing, yes/no, one list item per line."""
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "\n".join(json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v)
                         for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def machine_text(value: Any) -> str:
    """A cell for scripts (value, csv): '' for nothing, true/false, a list comma-joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and not any(isinstance(v, dict | list) for v in value):
        return ",".join(machine_text(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _csv_cell(value: Any) -> Any:
    # Numbers stay numbers (unquoted under QUOTE_NONNUMERIC); everything else is quoted text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return machine_text(value)


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_csv_cell(v) for v in row] for row in rows)
    return buf.getvalue()


def _structured(value: Any, fmt: OutputFormat) -> str:
    if fmt is OutputFormat.json:
        return json.dumps(value, indent=2, sort_keys=False) + "\n"
    return str(yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True))


# -- lists ----------------------------------------------------------------------


def list_text(items: Sequence[Mapping[str, Any]], view: ListView) -> str:
    """A list as json, yaml, value or csv."""
    if view.fmt in (OutputFormat.json, OutputFormat.yaml):
        if view.picked:
            return _structured([{c.key: item.get(c.key) for c in view.columns} for item in items], view.fmt)
        return _structured([dict(item) for item in items], view.fmt)
    rows = [[c.value(item) for c in view.columns] for item in items]
    if view.fmt is OutputFormat.csv:
        return _csv([c.header for c in view.columns], rows)
    return "".join(" ".join(machine_text(v) for v in row) + "\n" for row in rows)


def list_table(items: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> Table:
    table = _table()
    for col in columns:
        if col.no_wrap:
            table.add_column(col.header, no_wrap=True)
        else:
            table.add_column(col.header, overflow="fold")
    for item in items:
        table.add_row(*(Text(table_text(col.value(item))) for col in columns))
    return table


def width_keeping_ids(items: Sequence[Mapping[str, Any]], columns: Sequence[Column],
                      console_w: int) -> int:
    """The width to print a list table at: the terminal's, or wider where the ids need it.

    Wrappable columns may be squeezed to a few characters to fit the terminal;
    if even that leaves no room for the unwrapped ones, the table is widened.
    """

    def widest(col: Column) -> int:
        lines = [col.header, *(line for item in items for line in table_text(col.value(item)).splitlines())]
        return max(cell_len(line) for line in lines)

    def total(squeezed_w: int) -> int:
        widths = [widest(c) if c.no_wrap else min(widest(c), squeezed_w) for c in columns]
        return sum(widths) + COLUMN_GAP_W * (len(columns) - 1)

    if total(SQUEEZED_COLUMN_W) <= console_w:
        return console_w
    return max(console_w, total(WIDENED_COLUMN_W))


# -- one object -----------------------------------------------------------------


def _object_items(obj: Mapping[str, Any], view: ObjectView) -> list[tuple[str, Any]]:
    if view.keys is None:
        return [(k, v) for k, v in obj.items() if not (k == "links" and view.fmt is OutputFormat.table)]
    return [(k, obj.get(k)) for k in view.keys]


def object_text(obj: Mapping[str, Any], view: ObjectView) -> str:
    """One object as json, yaml, value (one field per line) or csv (a header row, one row)."""
    items = _object_items(obj, view)
    if view.fmt in (OutputFormat.json, OutputFormat.yaml):
        return _structured(dict(obj) if view.keys is None else dict(items), view.fmt)
    if view.fmt is OutputFormat.csv:
        return _csv([k for k, _ in items], [[v for _, v in items]])
    return "".join(machine_text(v) + "\n" for _, v in items)


def object_table(obj: Mapping[str, Any], view: ObjectView) -> Table:
    table = _table()
    table.add_column("Field", style="cyan", no_wrap=True)
    table.add_column("Value", overflow="fold")
    for key, value in _object_items(obj, view):
        shown = view.shape.cells.get(key, lambda v: v)(value)
        table.add_row(Text(key), Text(table_text(shown)))
    return table


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")


# -- printing -------------------------------------------------------------------


def print_table(table: Table, console: Console, width: int | None = None) -> None:
    """Print a table at the console's width, or wider (lines past the terminal's edge).

    Lines carry no trailing blanks, so that a wide table wraps in the terminal
    only where it has text, and a pasted one has no padding.
    """
    options = console.options.update_width(max(width or 0, console.width))
    segments: list[Segment] = []
    for line in console.render_lines(table, options, pad=False):
        segments.extend(_rstrip(line))
        segments.append(Segment.line())
    console.print(Segments(segments), crop=False, end="")


def _rstrip(line: list[Segment]) -> list[Segment]:
    while line and not line[-1].control and not line[-1].text.rstrip():
        line = line[:-1]
    if line and not line[-1].control:
        last = line[-1]
        line = [*line[:-1], Segment(last.text.rstrip(), last.style)]
    return line


def print_list(items: Sequence[Mapping[str, Any]], view: ListView, console: Console | None = None) -> None:
    console = console or out
    if view.fmt is not OutputFormat.table:
        _write(list_text(items, view), console)
        return
    print_table(list_table(items, view.columns), console,
                width_keeping_ids(items, view.columns, console.width))
    if not items:
        err.print("(none)")


def print_object(obj: Mapping[str, Any], view: ObjectView, console: Console | None = None) -> None:
    console = console or out
    if view.fmt is OutputFormat.table:
        print_table(object_table(obj, view), console)
    else:
        _write(object_text(obj, view), console)


def print_structured(value: Any, fmt: OutputFormat) -> None:
    """json or yaml of a value that has no Shape (e.g. a connection_info)."""
    _write(_structured(value, fmt), out)


def _write(text: str, console: Console) -> None:
    # Plain text, not rich: no highlighting, no wrapping, exactly parseable.
    console.file.write(text)
    console.file.flush()
