"""Drawing ``cnncli predict``: each image as the network saw it, beside its top classes."""

from __future__ import annotations

import json
from typing import Any

from rich.columns import Columns
from rich.console import Console, Group
from rich.text import Text

from cnncli.commands.predict import PredictResult
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


def show(result: PredictResult, fmt: str, console: Console) -> None:
    """Print the predictions (``table``: pictures and bars) or one JSON object (``json``)."""
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
