"""Tables that may be wider than the console: printed whole when they fit, else in blocks of columns.

A table whose cells may not wrap (numbers) and that needs more columns than the
console has would lose digits to Rich's ellipsis. Instead its columns are split
into blocks that each fit, every block repeating the leading key columns (the
row labels), the way numpy prints a wide array.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from rich.console import Console
from rich.table import Table

_UNBOUNDED = 10_000  # measure as if the console were this wide, so that the measurement is not clamped


def minimum_width(console: Console, table: Table) -> int:
    """The fewest cells ``table`` needs without cutting a cell that may not wrap.

    Rich's own measurement of a table counts a no-wrap column at its longest word, not its longest line,
    so the columns are measured one by one (Rich's per-column measure, padding included).
    """
    options = console.options.update_width(_UNBOUNDED)
    total = table._extra_width
    for column in table.columns:
        measured = table._measure_column(console, options, column)
        total += measured.maximum if column.no_wrap else measured.minimum
    return total


def fits(console: Console, table: Table) -> bool:
    return minimum_width(console, table) <= console.options.max_width


def _columns(table: Table, columns: list, first: bool) -> Table:
    part = copy.copy(table)
    part.columns = [replace(column, _index=i) for i, column in enumerate(columns)]
    if not first:
        part.title = None
    return part


def blocks(console: Console, table: Table, keys: int = 1, groups: tuple[int, ...] = ()) -> list[Table]:
    """``table`` whole if it fits the console, else split after its first ``keys`` columns into blocks that
    fit. ``groups``: how many of the following columns belong together, in order (the rest one by one); a
    group is kept in one block when it fits one. A single column too wide for the console is a block."""
    if fits(console, table) or len(table.columns) <= keys + 1:
        return [table]
    head, rest = table.columns[:keys], table.columns[keys:]
    sizes = [n for n in groups if n > 0]
    sizes += [1] * (len(rest) - sum(sizes))
    bundles, at = [], 0
    for n in sizes:
        bundles.append(rest[at:at + n])
        at += n
    parts: list[Table] = []
    current: list = []

    def flush() -> None:
        if current:
            parts.append(_columns(table, head + current, not parts))
            current.clear()

    def fitting(columns: list) -> bool:
        return fits(console, _columns(table, head + columns, not parts))

    for bundle in bundles:
        if fitting(current + bundle):
            current.extend(bundle)
            continue
        flush()
        if fitting(bundle):
            current.extend(bundle)
            continue
        for column in bundle:  # a group wider than the console: as many of its columns as fit, block by block
            if current and not fitting(current + [column]):
                flush()
            current.append(column)
    flush()
    return parts


def print_table(console: Console, table: Table, keys: int = 1, groups: tuple[int, ...] = ()) -> None:
    """Print ``table`` within the console's width: whole, or in blocks of columns (see :func:`blocks`)
    separated by a blank line."""
    for i, part in enumerate(blocks(console, table, keys, groups)):
        if i:
            console.print()
        console.print(part)
