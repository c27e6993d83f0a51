"""Charts in the terminal: line charts in braille dots, heat maps in coloured cells.

A line chart's plot area has 2×4 braille dots per character cell, so a chart
80 cells wide and 12 high draws on a 160×48 grid. Lines join consecutive
points (Bresenham's line on the dot grid); a missing value breaks the line.
In colour each series has its own colour; without colour (a pipe, a file,
``NO_COLOR``) the lines are the same and each series marks its data points
with its own glyph, which the legend shows.

A logarithmic y axis (``log_y``) ticks at 1, 2, 5 × 10^k, so that curves that
fall geometrically, like training errors, stay apart at their low end.

A heat map colours one cell per (row, column) value on a logarithmic scale,
from dark blue (small) through green to yellow (large), like matplotlib's
viridis; without colour it shades with ``·░▒▓█``. Columns wider than the
terminal are merged (the geometric mean of the values they cover).

Everything here returns :class:`rich.text.Text`; ``colour=False`` output is
plain characters, stable enough for golden files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.style import Style
from rich.text import Text

PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")
MARKERS = "●○■□▲△◆◇"
SHADES = "·░▒▓█"
# viridis at eight stops (matplotlib's colormap, sampled), for heat-map cells
_VIRIDIS = ((68, 1, 84), (70, 50, 127), (54, 92, 141), (39, 127, 142), (31, 161, 135), (74, 194, 109),
            (159, 218, 58), (253, 231, 37))
_BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [dot row][dot column]


@dataclass(frozen=True)
class Series:
    """One line: ``points`` (x, y) in x order; a y of None is a gap."""

    label: str
    points: Sequence[tuple[float, float | None]]


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 × 10^k apart) from ≤ lo to ≥ hi, about ``target`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got {lo}, {hi}")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def log_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Ticks for a logarithmic axis: the 1, 2, 5 × 10^k values from ≤ lo to ≥ hi (only the powers of ten when
    those would be more than ``target`` + 2); ``lo`` and ``hi`` must be positive."""
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"a logarithmic axis needs a positive, finite range, got {lo}, {hi}")
    if hi < lo:
        lo, hi = hi, lo
    for mantissas in ((1, 2, 5), (1,)):
        values = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                  for m in mantissas]
        first = max(v for v in values if v <= lo * (1 + 1e-9))
        last = min(v for v in values if v >= hi * (1 - 1e-9))
        ticks = [float(f"{v:.12g}") for v in values if first <= v <= last]
        if len(ticks) <= target + 2:
            break
    if len(ticks) == 1:  # one value on a tick: the 1-2-5 values either side of it
        ticks = log_ticks(ticks[0] * 0.9, ticks[0] * 1.1, target)
    return ticks


def tick_format(ticks: Sequence[float]) -> str:
    """A format with as many decimals as the ticks' spacing needs."""
    if len(ticks) < 2:
        return "{:g}"
    step = abs(ticks[1] - ticks[0])
    decimals = 0
    while decimals < 8 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return "{:.%df}" % decimals


def _line(x0: int, y0: int, x1: int, y1: int):
    """The dots of the segment (x0, y0)–(x1, y1), Bresenham's way."""
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while True:
        yield x0, y0
        if x0 == x1 and y0 == y1:
            return
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy


def line_chart(series: Sequence[Series], *, width: int, height: int, colour: bool, title: str = "",
               x_range: tuple[float, float] | None = None, x_label: str = "", integer_x: bool = True,
               log_y: bool = False) -> Text:
    """Lines of ``series`` on shared axes, ``width`` cells wide (labels included), ``height`` rows of plot;
    with ``log_y`` the y axis is logarithmic and values that are not positive are gaps (a linear axis when
    no value is positive: errors of 0 all through)."""
    finite = [y for s in series for _, y in s.points if y is not None and math.isfinite(y)]
    log_y = log_y and any(y > 0 for y in finite)

    def drawn(y: float | None) -> bool:
        return y is not None and math.isfinite(y) and (y > 0 or not log_y)

    ys = [y for s in series for _, y in s.points if drawn(y)]
    xs = [x for s in series for x, _ in s.points]
    if not ys:
        raise ValueError("a line chart needs at least one finite value")
    lo_x, hi_x = x_range if x_range is not None else (min(xs), max(xs))
    if hi_x <= lo_x:
        lo_x, hi_x = lo_x - 1, hi_x + 1
    if log_y:
        # The axis spans the values (a decade of blank axis below them would squeeze the lines), with the
        # ticks inside it; when fewer than two fall inside, it spans the ticks either side.
        scale = math.log10
        y_ticks = log_ticks(min(ys), max(ys), target=max(2, height // 2 + 1))
        inside = [v for v in y_ticks if min(ys) * (1 - 1e-9) <= v <= max(ys) * (1 + 1e-9)]
        if len(inside) >= 2:
            y_ticks, (lo_y, hi_y) = inside, (scale(min(ys)), scale(max(ys)))
        else:
            lo_y, hi_y = scale(y_ticks[0]), scale(y_ticks[-1])
        labels = [f"{v:g}" for v in y_ticks]
    else:
        scale = float
        y_ticks = nice_ticks(min(ys), max(ys), target=max(2, min(6, height // 2 + 1)))
        y_fmt = tick_format(y_ticks)
        labels = [y_fmt.format(v) for v in y_ticks]
        lo_y, hi_y = y_ticks[0], y_ticks[-1]
    label_w = max(len(s) for s in labels)
    plot_w = max(width - label_w - 2 - (len(x_label) + 1 if x_label else 0), 8)
    dots_w, dots_h = plot_w * 2, height * 4

    def dot_x(x: float) -> int:
        return min(dots_w - 1, max(0, round((x - lo_x) / (hi_x - lo_x) * (dots_w - 1))))

    def dot_y(y: float) -> int:
        return min(dots_h - 1, max(0, round((hi_y - scale(y)) / (hi_y - lo_y) * (dots_h - 1))))

    bits = [[0] * plot_w for _ in range(height)]
    owner = [[-1] * plot_w for _ in range(height)]
    marks: dict[tuple[int, int], int] = {}
    for k, s in enumerate(series):
        previous = None
        for x, y in s.points:
            if not drawn(y):
                previous = None
                continue
            here = (dot_x(x), dot_y(y))
            for px, py in _line(*(previous or here), *here):
                bits[py // 4][px // 2] |= _BRAILLE_BITS[py % 4][px % 2]
                owner[py // 4][px // 2] = k
            marks[(here[1] // 4, here[0] // 2)] = k
            previous = here

    tick_rows = {dot_y(v) // 4: label for v, label in zip(y_ticks, labels)}
    text = Text(no_wrap=True)
    if title:
        text.append(title + "\n", Style(bold=True) if colour else None)
    for r in range(height):
        text.append(tick_rows.get(r, "").rjust(label_w) + (" ┤" if r in tick_rows else " │"))
        for c in range(plot_w):
            k = owner[r][c]
            if not colour and (r, c) in marks:
                text.append(MARKERS[marks[(r, c)] % len(MARKERS)])
            elif bits[r][c]:
                text.append(chr(0x2800 + bits[r][c]),
                            Style(color=PALETTE[k % len(PALETTE)]) if colour else None)
            else:
                text.append(" ")
        text.append("\n")

    # The x axis: ticks at round values inside the range, labels centred under them where they fit.
    x_ticks = sorted({v for v in nice_ticks(lo_x, hi_x, target=max(2, min(8, plot_w // 8))) + [lo_x, hi_x]
                      if lo_x - 1e-9 <= v <= hi_x + 1e-9 and (not integer_x or float(v).is_integer())})
    x_fmt = "{:.0f}" if integer_x else tick_format(x_ticks)
    axis = ["─"] * plot_w
    label_row = [" "] * (plot_w + 12)
    free_from = 0
    for i, v in enumerate(x_ticks):
        c = dot_x(v) // 2
        axis[c] = "┬"
        s = x_fmt.format(v)
        start = max(0, c - (len(s) - 1) // 2)
        # A label needs a free space before it; the last tick's label is kept over its neighbour's.
        if start >= free_from and (i == len(x_ticks) - 1 or start + len(s) < dot_x(x_ticks[-1]) // 2 - 1):
            label_row[start:start + len(s)] = s
            free_from = start + len(s) + 1
    text.append(" " * label_w + " └" + "".join(axis) + (f" {x_label}" if x_label else "") + "\n")
    text.append(" " * (label_w + 2) + "".join(label_row).rstrip() + "\n")
    # The legend, wrapped to the width.
    line_len = label_w + 2
    text.append(" " * line_len)
    for k, s in enumerate(series):
        key = "━━" if colour else MARKERS[k % len(MARKERS)]
        item = f"{key} {s.label}"
        if line_len + len(item) + 3 > width and line_len > label_w + 2:
            text.append("\n" + " " * (label_w + 2))
            line_len = label_w + 2
        text.append(key, Style(color=PALETTE[k % len(PALETTE)]) if colour else None)
        text.append(f" {s.label}   ")
        line_len += len(item) + 3
    text.rstrip()
    return text


def viridis(t: float) -> tuple[int, int, int]:
    """The colour (r, g, b) at ``t`` in 0..1 (clipped) of the heat maps' scale, from dark blue to yellow."""
    t = min(1.0, max(0.0, t)) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(a[j] + (b[j] - a[j]) * f) for j in range(3))


def _merge_columns(values: Sequence[Sequence[float | None]], columns: Sequence[int], fit: int):
    """Merge adjacent columns (geometric means) until at most ``fit`` remain; returns (values, first labels)."""
    n = len(columns)
    if n <= fit:
        return [list(row) for row in values], list(columns), [(c, c) for c in columns]
    groups = [(round(g * n / fit), round((g + 1) * n / fit)) for g in range(fit)]
    merged = []
    for row in values:
        out = []
        for a, b in groups:
            logs = [math.log10(v) for v in row[a:b] if v is not None and v > 0 and math.isfinite(v)]
            out.append(10 ** (sum(logs) / len(logs)) if logs else None)
        merged.append(out)
    return merged, [columns[a] for a, _ in groups], [(columns[a], columns[b - 1]) for a, b in groups]


def heat_map(rows: Sequence[str], columns: Sequence[int], values: Sequence[Sequence[float | None]], *,
             width: int, colour: bool, title: str = "", column_label: str = "epoch",
             value_label: str = "") -> Text:
    """``values[row][column]`` (positive numbers, None where missing) on a log colour scale."""
    finite = [v for row in values for v in row if v is not None and v > 0 and math.isfinite(v)]
    if not finite:
        raise ValueError("a heat map needs at least one positive value")
    name_w = min(max(len(r) for r in rows), 28)
    fit = max(1, width - name_w - 3 - len(column_label))
    cells, starts, spans = _merge_columns(values, list(columns), fit)
    cell_w = max(1, min(4, fit // max(len(starts), 1)))
    lo, hi = math.log10(min(finite)), math.log10(max(finite))
    span = hi - lo or 1.0

    def level(v: float | None) -> float | None:
        return None if v is None or not (v > 0 and math.isfinite(v)) else (math.log10(v) - lo) / span

    def cell(t: float | None) -> tuple[str, Style | None]:
        if t is None:
            return " " * cell_w, None
        if colour:
            r, g, b = viridis(t)
            return " " * cell_w, Style(bgcolor=f"rgb({r},{g},{b})")
        return SHADES[min(len(SHADES) - 1, int(t * len(SHADES)))] * cell_w, None

    def short(name: str) -> str:
        return name if len(name) <= name_w else name[:name_w // 2 - 1] + "…" + name[-(name_w - name_w // 2):]

    text = Text(no_wrap=True)
    if title:
        text.append(title + "\n", Style(bold=True) if colour else None)
    for name, row in zip(rows, cells):
        text.append(short(name).ljust(name_w) + " ")
        for v in row:
            glyphs, style = cell(level(v))
            text.append(glyphs, style)
        text.append("\n")
    # Column labels at round column values (every 1, 2, 5, 10, ... as room allows), under the column
    # that holds the value, and the first one's.
    n = len(starts)
    room = len(str(spans[-1][1])) + 1
    per_cell = (spans[-1][1] - spans[0][0] + 1) / (n * cell_w)
    step = next(k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if k >= room * per_cell)
    wanted = [spans[0][0]] + list(range(step * (spans[0][0] // step + 1), spans[-1][1] + 1, step))
    axis = [" "] * (n * cell_w + room)
    free_from = 0
    for value in wanted:
        i = next(i for i, (a, b) in enumerate(spans) if a <= value <= b)
        s, at = str(value), i * cell_w
        if at >= free_from and at + len(s) <= n * cell_w + 1:
            axis[at:at + len(s)] = s
            free_from = at + len(s) + 1
    text.append(" " * (name_w + 1) + "".join(axis).rstrip() + f"  {column_label}\n")
    # The scale: five steps from the smallest to the largest value.
    text.append(" " * (name_w + 1) + f"{10 ** lo:.2g} ")
    for k in range(5):
        glyphs, style = cell(k / 4)
        text.append(glyphs if cell_w > 1 or not colour else glyphs * 2, style)
    text.append(f" {10 ** hi:.2g}" + (f"  {value_label}" if value_label else ""))
    return text
