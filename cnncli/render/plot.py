"""Drawing ``cnncli plot``: training curves and gradient maps in the terminal, as files, or as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from cnncli.records.history import CURVES, PERCENT, Curves, GradientMap
from cnncli.render import colour_on, say
from cnncli.render.charts import Series, heat_map, line_chart
from cnncli.words import plural

CHART_ROWS = 10      # rows of braille per chart (40 dots high)
MAX_WIDTH = 120      # charts wider than this are harder to read, not clearer


#: What each curve is (metrics.csv field -> words).
NAMES = dict(CURVES)


def width(console: Console) -> int:
    return max(40, min(console.width, MAX_WIDTH))


def series(curves: Curves, keys: tuple[str, ...], value: Callable[[float], float] = lambda v: v) -> list[Series]:
    """One line per run and key (``train_*`` is "training", ``val_*`` "validation"), values through ``value``."""
    out = []
    for run in curves.runs:
        for key in keys:
            values = run.values[key]
            if all(v is None for v in values):
                continue
            what = "training" if key.startswith("train") else NAMES[key].replace("validation ", "") \
                if key.startswith("val_map") else "validation"
            label = (f"{run.label} {what}" if len(keys) > 1 else run.label) if len(curves.runs) > 1 else what
            out.append(Series(label, [(e, None if v is None else value(v)) for e, v in zip(run.epochs, values)]))
    return out


def _state(run) -> str:
    done = len(run.epochs)
    planned = f" of {run.epochs_planned}" if run.epochs_planned else ""
    epochs = plural(run.epochs_planned or done, "epoch")
    if run.complete:
        test = f", test accuracy {100 * run.test_acc:.2f} % (last.npz)" if run.test_acc is not None else \
            f", test mAP@0.5 {run.test_map50:.3f} (last.npz)" if run.test_map50 is not None else ""
        return f"{done}{planned} {epochs}, complete{test}"
    return f"{done}{planned} {epochs} so far (training, or stopped: train on with the option below)"


def save(figure, out: Path | None, console: Console, fmt: str) -> str | None:
    if out is None:
        return None
    from cnncli.render import figures

    path = str(figures.save(figure(), out))
    if fmt != "json":
        say(console, f"wrote {path}")
    return path


def _json(record: dict, figure, out: Path | None, console: Console) -> None:
    """The numbers behind a picture as one JSON object (with ``file`` when one was written)."""
    path = save(figure, out, console, "json")
    console.print(json.dumps({**record, **({"file": path} if path else {})}, indent=2), markup=False,
                  highlight=False, soft_wrap=True)


def show_curves(curves: Curves, fmt: str, console: Console, out: Path | None = None) -> None:
    """Loss and accuracy charts of the runs (``table``), or their numbers (``json``); ``out``: a file too."""
    from cnncli.render import figures

    figure = lambda: figures.curves_figure(curves)  # noqa: E731
    if fmt == "json":
        return _json(curves.to_json(), figure, out, console)
    colour, chart_width = colour_on(console), width(console)
    for run in curves.runs:
        say(console, f"{run.label}: {run.model} on {run.dataset}, {_state(run)}")
        if not run.complete:  # an option to copy: on a line of its own, never broken by a wrap of ours
            console.print(f"  --resume {run.folder}/last.npz", markup=False, highlight=False, soft_wrap=True)
    for name in curves.empty:
        say(console, f"{name}: no finished epoch yet")
    for keys, title in curves.panels():
        value = (lambda v: 100 * v) if keys[0] in PERCENT else (lambda v: v)
        console.print()
        console.print(line_chart(series(curves, keys, value), width=chart_width, height=CHART_ROWS, colour=colour,
                                 title=title, x_range=curves.x_range, x_label="epoch"))
    save(figure, out, console, fmt)


def show_gradients(gmap: GradientMap, fmt: str, console: Console, out: Path | None = None) -> None:
    """The gradient map as a heat map (``table``) or its numbers (``json``); ``out``: a file too."""
    from cnncli.render import figures

    figure = lambda: figures.gradient_figure(gmap)  # noqa: E731
    if fmt == "json":
        return _json(gmap.to_json(), figure, out, console)
    console.print(heat_map(gmap.layers, gmap.epochs, gmap.values, width=width(console), colour=colour_on(console),
                           title=gmap.title, value_label=f"{gmap.metric}, log scale"))
    save(figure, out, console, fmt)
