"""Pictures as files (``--out``): PNG, SVG or PDF through matplotlib, written atomically.

matplotlib is the ``plots`` extra, not a runtime dependency: it (with its own
dependencies) is several times the size of everything else cnncli needs, and
only files need it; the terminal charts are Rich alone. Figures are built on
:class:`matplotlib.figure.Figure` directly, never pyplot, so no GUI backend or
global state is involved. A file appears whole or not at all
(:func:`cnncli.atomic.write_atomic`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnncli import atomic, extras
from cnncli.atomic import write_atomic
from cnncli.errors import UsageError
from cnncli.records.history import CURVES, ERRORS_ON_LOG_AXIS, PERCENT, Curves, GradientMap

if TYPE_CHECKING:  # the commands' records, named in annotations only: checking --out must not load the engine
    from cnncli.commands.explain import Explanation
    from cnncli.commands.features import FeatureResult

#: File types ``--out`` writes.
FILE_TYPES = (".png", ".svg", ".pdf")


def check_out(out: Path | None, flag: str = "--out") -> None:
    """A picture file ``flag`` names: of a type we write, in a folder that can take it
    (:func:`cnncli.atomic.check_file`), and matplotlib (the plots extra) there to write it; checked before
    any work."""
    if out is None:
        return
    atomic.check_file(out, flag, FILE_TYPES, example="curves.png")
    extras.require("plots", f"writing pictures to files ({flag})")


def _require() -> None:
    # The commands check this before any work (check_out); here for any other caller.
    extras.require("plots", "writing pictures to files")


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` in the format its suffix names (.png, .svg, .pdf)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lower().lstrip("."), dpi=150, bbox_inches="tight")
    try:
        write_atomic(path, lambda out: out.write(buf.getvalue()))
    except OSError as e:
        raise UsageError(f"cannot write --out {path}: {e.strerror or e}") from None
    return path


def curves_figure(curves: Curves, error: bool = False):
    """Loss and accuracy per epoch, solid training and dashed validation; with ``error``, the training and
    the validation error of each run in a panel each (on a log axis: :data:`cnncli.records.history.ERRORS_ON_LOG_AXIS`)."""
    _require()
    from matplotlib.ticker import MaxNLocator

    if error:
        panels = [(("train_acc",), "training error (%)"), (("val_acc",), "validation error (%)")]
        panels = [p for p in panels if any(v is not None for r in curves.runs for v in r.values[p[0][0]])]
    else:
        panels = curves.panels()
    fig = _figure(figsize=(6.4 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    names = dict(CURVES)
    for ax, (keys, ylabel) in zip(axes, panels):
        for i, run in enumerate(curves.runs):
            colour = f"C{i % 10}"
            for key, style in zip(keys, ("-", "--")):
                values = run.values[key]
                if all(v is None for v in values):
                    continue
                ys = [np.nan if v is None else (100 * (1 - v) if error else 100 * v if key in PERCENT else v)
                      for v in values]
                if error:
                    label = run.label  # the panel says which error
                elif len(curves.runs) > 1:
                    label = f"{run.label} {names[key].split()[0]}"
                else:
                    label = names[key]
                ax.plot(run.epochs, ys, style, color=colour, label=label, marker="." if len(ys) < 30 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if curves.x_range[1] > curves.x_range[0]:
            ax.set_xlim(*curves.x_range)
        ax.set_ylabel(ylabel)
        if error and ERRORS_ON_LOG_AXIS and any(np.nanmax(line.get_ydata(), initial=0) > 0 for line in ax.get_lines()):
            _log_percent_axis(ax)
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.15, which="minor")
        ax.legend(fontsize="small")
    return fig


def _log_percent_axis(ax) -> None:
    """A logarithmic y axis labelled in plain numbers at 1, 2, 5 × 10^k (as the terminal chart's)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def gradient_figure(gmap: GradientMap):
    """The gradient map as an image: layers down (input side on top), epochs across, log colour scale."""
    _require()
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    values = np.array([[np.nan if v is None or not v > 0 else v for v in row] for row in gmap.values], dtype=float)
    rows, cols = values.shape
    fig = _figure(figsize=(min(4 + 0.25 * cols, 14), min(2 + 0.18 * rows, 18)), layout="constrained")
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis",
                      norm=LogNorm(vmin=finite.min(), vmax=finite.max()),
                      extent=(gmap.epochs[0] - 0.5, gmap.epochs[-1] + 0.5, rows - 0.5, -0.5))
    every = max(1, math.ceil(rows / 60))
    ax.set_yticks(range(0, rows, every), [gmap.layers[i] for i in range(0, rows, every)], fontsize="x-small")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(gmap.title, fontsize="medium")
    fig.colorbar(image, ax=ax, label=gmap.metric.replace("_", " "))
    return fig


def _image(ax, pixels: np.ndarray, title: str) -> None:
    """uint8 (1 or 3, H, W) into ``ax``, without axes."""
    if pixels.shape[0] == 3:
        ax.imshow(np.moveaxis(pixels, 0, -1), interpolation="nearest")
    else:
        ax.imshow(pixels[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize="x-small")
    ax.set_axis_off()


def feature_figure(result: FeatureResult, per_row: int = 8):
    """The input, the first layer's filters and each layer's maps, one block of rows per layer."""
    _require()
    blocks = [("input and " + (f"filters of {result.filters.layer}" if result.filters else "no filters"),
               [("input", result.pixels)] + ([(f"{i}", p) for i, p in enumerate(result.filters.pictures)]
                                             if result.filters else []))]
    for m in result.layers:
        blocks.append((f"{m.name} ({m.kind}) {'×'.join(map(str, m.shape))}",
                       [(f"{s.channel}", p[None]) for s, p in zip(m.stats, m.pictures)]))
    heights = [math.ceil(len(tiles) / per_row) for _, tiles in blocks]
    fig = _figure(figsize=(1.3 * per_row, 1.5 * sum(heights) + 0.4 * len(blocks)), layout="constrained")
    sub = fig.subfigures(len(blocks), 1, height_ratios=heights, squeeze=False)[:, 0]
    for panel, (title, tiles), rows in zip(sub, blocks, heights):
        panel.suptitle(title, fontsize="small")
        axes = panel.subplots(rows, per_row, squeeze=False).ravel()
        for ax in axes[len(tiles):]:
            ax.set_axis_off()
        for ax, (name, pixels) in zip(axes, tiles):
            _image(ax, pixels, name)
    return fig


def explain_figure(result: Explanation):
    """The input, the map at its own resolution (with its scale) and the upsampled map over the input."""
    _require()
    fig = _figure(figsize=(10, 3.6), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    _image(left, result.pixels, "input")
    h, w = result.map.shape
    lo = min(0.0, float(result.map.min()))
    hi = max(float(result.map.max()), lo + 1e-12)
    shown = middle.imshow(result.raw, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest",
                          extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    rh, rw = result.raw.shape
    middle.set_title(f"{result.title}, {rh}×{rw}" + (f" at {result.layer}" if result.layer else ""),
                     fontsize="x-small")
    middle.set_axis_off()
    fig.colorbar(shown, ax=middle, shrink=0.8)
    _image(right, result.pixels, f"over the input: class {result.class_names[result.target]} "
                                 f"({100 * result.probability:.1f} %)")
    right.imshow(result.map, cmap="viridis", vmin=lo, vmax=hi, alpha=0.5, interpolation="bilinear")
    fig.suptitle(f"{result.model}: {result.source}", fontsize="small")
    return fig
