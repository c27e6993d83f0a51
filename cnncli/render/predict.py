"""Drawing ``cnncli predict``: each image as the network saw it, beside its top classes (a detector's: with its
boxes drawn on it, beside the list of what it found)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from rich.columns import Columns
from rich.console import Console, Group
from rich.text import Text

from cnncli.commands.predict import PALETTE, DetectResult, ImageDetections, PredictResult
from cnncli.render import colour_on, head_record, say, weights_head
from cnncli.render.pictures import picture, shrink

_BAR = 20  # characters of a 100 % probability bar
_MAX_PICTURE = 64  # columns of a large image's picture, at most ...
_MIN_PICTURE = 28  # ... and at least (when the terminal is narrow, the bars go below it); MNIST's 28 as it is


def as_dict(result: PredictResult) -> dict[str, Any]:
    return {
        "model": result.model, "checkpoint": str(result.checkpoint), "dataset": result.dataset,
        "input": result.input, "top_k": result.top_k, "invert": result.invert,
        "predictions": [{"file": str(p.path),
                         "top": [{"class": g.label, "name": g.name, "probability": g.probability}
                                 for g in p.guesses],
                         "warnings": [{"kind": w.kind, "message": w.message} for w in p.warnings]}
                        for p in result.predictions],
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in result.skipped],
        "head": head_record(result.head),
    }


def _guesses(p, colour: bool) -> Text:
    text = Text(no_wrap=True)
    text.append(f"{p.path.name}\n", style="bold")
    for i, g in enumerate(p.guesses):
        filled = round(_BAR * g.probability)
        text.append(f"{g.name[:18]:18} ", style="bold" if i == 0 else "")
        text.append("█" * filled, style="green" if i == 0 else "blue")
        text.append("·" * (_BAR - filled), style="dim")
        text.append(f" {100 * g.probability:5.1f} %" + ("\n" if i + 1 < len(p.guesses) else ""))
    return text


def _closing(result: PredictResult) -> list[str]:
    """Lines after the images: what was left out, and what to do about images that look inverted."""
    lines = [f"left out: {s}" for s in result.skipped]
    doubtful = sum(1 for p in result.predictions if any(w.kind == "inverted" for w in p.warnings))
    if doubtful:
        n = len(result.predictions)
        what = f"{doubtful} of {n} images look{'s' if doubtful == 1 else ''}" if n > 1 else "the image looks"
        they = "it is" if doubtful == 1 else "they are"
        if result.invert:
            lines.append(f"{what} inverted after --invert; if {they} light on dark already, run again without "
                         "--invert")
        else:
            lines.append(f"{what} inverted against the training images ({result.dataset_title}); if {they} dark "
                         "on light, run again with --invert (the answers above are for the images as given)")
    return lines


def detections_dict(result: DetectResult) -> dict[str, Any]:
    """A detector's JSON record: per image, its boxes ``{"name", "class", "score", "box": [x0, y0, x1, y1]}`` in the
    image file's pixels, best first."""
    return {
        "model": result.model, "checkpoint": str(result.checkpoint), "dataset": result.dataset,
        "input": result.input, "conf": result.conf, "iou": result.iou, "invert": result.invert,
        "images": [{"file": str(d.path), "width": d.letterbox.width, "height": d.letterbox.height,
                    "boxes": [{"name": f.name, "class": f.cls, "score": f.score, "box": [round(v, 2) for v in f.box]}
                              for f in d.found],
                    "warnings": [{"kind": w.kind, "message": w.message} for w in d.warnings]}
                   for d in result.images],
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in result.skipped],
        "written": [str(p) for p in result.written],
        "head": head_record(result.head),
    }


def _boxed(d: ImageDetections, cells: int, colour: bool) -> Text:
    """What the network saw, shrunk to at most ``cells`` columns, with its boxes outlined (a class's colour; white
    without colour, where a cell shows ink)."""
    small = shrink(d.pixels, cells)
    rgb = np.repeat(small, 3, axis=0) if small.shape[0] == 1 else small.copy()
    k = d.pixels.shape[2] / small.shape[2]
    h, w = rgb.shape[1:]
    for (x0, y0, x1, y1), f in zip(d.input_boxes, d.found):
        c0, r0 = max(0, math.floor(x0 / k)), max(0, math.floor(y0 / k))
        c1, r1 = min(w - 1, math.ceil(x1 / k) - 1), min(h - 1, math.ceil(y1 / k) - 1)
        ink = np.array(PALETTE[f.cls % len(PALETTE)] if colour else (255, 255, 255), dtype=np.uint8)[:, None]
        rgb[:, r0, c0:c1 + 1] = rgb[:, r1, c0:c1 + 1] = ink
        rgb[:, r0:r1 + 1, c0] = rgb[:, r0:r1 + 1, c1] = ink
    return picture(rgb, colour)


def _found(d: ImageDetections) -> Text:
    text = Text(no_wrap=True)
    text.append(f"{d.path.name}", style="bold")
    text.append(f"  {d.letterbox.width}×{d.letterbox.height}, {len(d.found)} found\n")
    for f in d.found:
        r, g, b = PALETTE[f.cls % len(PALETTE)]
        text.append("■ ", style=f"rgb({r},{g},{b})")
        x0, y0, x1, y1 = f.box
        text.append(f"{f.name[:14]:14} {f.score:.2f}  [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]\n")
    text.rstrip()
    return text


def show_detections(result: DetectResult, fmt: str, console: Console) -> None:
    """Print what a detector found (``table``: each image with its boxes, and their list) or one JSON object."""
    if fmt == "json":
        console.print(json.dumps(detections_dict(result), indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    say(console, Text.assemble((result.model, "bold"), f" · {result.checkpoint} · classes of {result.dataset_title} "
                                                       f"· input {result.input}"))
    if result.one_object:
        say(console, f"one box an image, scored by its class's probability (shown from {result.conf:g}); in each "
                     "image file's pixels")
    else:
        say(console, f"boxes scoring at least {result.conf:g} (objectness × class probability), after non-maximum "
                     f"suppression at IoU {result.iou:g}; in each image file's pixels")
    if result.head:
        say(console, weights_head(result.head))
    colour = colour_on(console)
    cells = max(_MIN_PICTURE, min(_MAX_PICTURE, console.width - 2 - 46))
    for d in result.images:
        console.print()
        console.print(Columns([_boxed(d, cells, colour), Group(_found(d))], padding=(0, 2)))
        for w in d.warnings:
            console.print(Text(f"warning: {w.message}", style="yellow"), soft_wrap=True)
    if result.written:
        console.print()
        say(console, f"drawn: {', '.join(str(p) for p in result.written)}")
    for s in result.skipped:
        console.print(Text(f"left out: {s}", style="yellow"), soft_wrap=True)


def show(result: PredictResult | DetectResult, fmt: str, console: Console) -> None:
    """Print the predictions (``table``: pictures and bars) or one JSON object (``json``)."""
    if isinstance(result, DetectResult):
        show_detections(result, fmt, console)
        return
    if fmt == "json":
        console.print(json.dumps(as_dict(result), indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    title = result.dataset_title
    say(console, Text.assemble((result.model, "bold"), f" · {result.checkpoint} · classes of {title} · "
                                                       f"input {result.input}"))
    if result.head:
        say(console, weights_head(result.head))
    colour = colour_on(console)
    # A photo at 224×224 is shrunk to leave the bars beside it room (2 columns between, 47 for the bars).
    cells = max(_MIN_PICTURE, min(_MAX_PICTURE, console.width - 2 - 47))
    for p in result.predictions:
        console.print()
        console.print(Columns([picture(shrink(p.pixels, cells), colour), Group(_guesses(p, colour))],
                              padding=(0, 2)))
        for w in p.warnings:
            console.print(Text(f"warning: {w.message}", style="yellow"), soft_wrap=True)
    closing = _closing(result)
    if closing:
        console.print()
    for line in closing:
        console.print(Text(line, style="yellow"), soft_wrap=True)
