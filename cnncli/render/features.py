"""Drawing ``cnncli features``: the image, the first layer's filters and each layer's maps as grids.

Maps are drawn with :func:`cnncli.render.pictures.picture` (two pixels per
character cell), enlarged to at least :data:`MIN_CELLS` columns when small (a
5×5 filter, a 7×7 map) and shrunk by averaging when wider than the terminal,
then laid out in as many columns as the width holds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.columns import Columns
from rich.console import Console, Group
from rich.text import Text

from cnncli.commands.features import FeatureResult
from cnncli.render import colour_on, head_record, say, weights_head
from cnncli.render.pictures import picture, shrink

MIN_CELLS = 12   # small maps are enlarged (nearest neighbour) to at least this many columns


def fit(pixels: np.ndarray, max_cells: int) -> np.ndarray:
    """uint8 (C, H, W) enlarged by a whole factor to ≥ MIN_CELLS columns, or averaged down to ≤ max_cells."""
    w = pixels.shape[2]
    if w > max_cells:
        return shrink(pixels, max_cells)
    k = max(1, min(math.ceil(MIN_CELLS / w), max_cells // w))
    return pixels.repeat(k, axis=1).repeat(k, axis=2) if k > 1 else pixels


def _tile(caption: str, pixels: np.ndarray, colour: bool, max_cells: int) -> Group:
    return Group(Text(caption, no_wrap=True, overflow="ellipsis"), picture(fit(pixels, max_cells), colour))


def _num(v: float) -> str:
    return f"{v:.3g}"


def as_dict(result: FeatureResult) -> dict[str, Any]:
    """The JSON record: prediction (a detector's: boxes, with predict's names and scores), per-map statistics and
    the raw values of the shown maps and filters."""
    return {
        "model": result.model, "checkpoint": str(result.checkpoint), "image": result.source,
        "label": result.label, "input": result.input,
        **({"boxes": [{"name": g.name, "class": g.label, "score": g.probability} for g in result.guesses]}
           if result.boxes else
           {"prediction": [{"class": g.label, "name": g.name, "probability": g.probability} for g in result.guesses]}),
        "warnings": [{"kind": w.kind, "message": w.message} for w in result.warnings],
        "head": head_record(result.head),
        "filters": None if result.filters is None else {
            "layer": result.filters.layer, "shape": list(result.filters.shape),
            "values": np.round(result.filters.values, 6).tolist()},
        "layers": [{"layer": m.name, "kind": m.kind, "shape": list(m.shape), "shown": len(m.stats),
                    "maps": [{"channel": s.channel, "min": s.min, "max": s.max, "mean": s.mean, "zeros": s.zeros,
                              "values": np.round(v, 6).tolist()} for s, v in zip(m.stats, m.values)]}
                   for m in result.layers],
    }


def show(result: FeatureResult, fmt: str, console: Console, out: Path | None = None) -> None:
    """Draw the maps (``table``) or print their numbers (``json``); ``out``: a PNG/SVG/PDF grid too."""
    from cnncli.render import figures

    path = None
    if out is not None:
        path = str(figures.save(figures.feature_figure(result), out))
    if fmt == "json":
        record = {**as_dict(result), **({"file": path} if path else {})}
        console.print(json.dumps(record), markup=False, highlight=False, soft_wrap=True)
        return
    colour = colour_on(console)
    width = max(console.width - 2, MIN_CELLS)
    if result.boxes:  # a box's score (objectness × class probability), as predict shows it
        guesses = ", ".join(f"{g.name} {g.probability:.2f}" for g in result.guesses) or "none"
    else:
        guesses = ", ".join(f"{g.name} {100 * g.probability:.1f} %" for g in result.guesses)
    say(console, f"{result.model} with {result.checkpoint}: {result.source}; input {result.input}")
    if result.head:
        say(console, weights_head(result.head))
    say(console, f"{'boxes (scores)' if result.boxes else 'prediction'}: {guesses}")
    for w in result.warnings:
        say(console, f"warning: {w.message}")
    tiles = [_tile("input", result.pixels, colour, width)]
    if result.filters is not None:
        f = result.filters
        what = "colour" if f.pictures.shape[1] == 3 else "input channel 0"
        say(console, f"filters of {f.layer}, {'×'.join(map(str, f.shape))} ({what}), each scaled from its "
                     "min (black) to its max (white):")
        tiles += [_tile(f"{f.layer}[{i}]", p, colour, width) for i, p in enumerate(f.pictures)]
    console.print(Columns(tiles, padding=(0, 2)))
    for m in result.layers:
        shown = len(m.stats)
        which = f"maps 0–{shown - 1} of {m.shape[0]}" if shown < m.shape[0] else f"all {shown} maps"
        console.print()
        say(console, f"{m.name} ({m.kind}) {'×'.join(map(str, m.shape))}: {which}, each scaled from its min "
                     "(black) to its max (white); caption: channel, min…max")
        console.print(Columns([_tile(f"{s.channel}: {_num(s.min)}…{_num(s.max)}", p[None], colour, width)
                               for s, p in zip(m.stats, m.pictures)], padding=(0, 2)))
    if path:
        say(console, f"wrote {path}")
