"""Drawing ``cnncli predict``: each image as the network saw it, beside its top classes."""

from __future__ import annotations

import json
from typing import Any

from rich.columns import Columns
from rich.console import Console, Group
from rich.text import Text

from cnncli.predict import PredictResult
from cnncli.render import colour_on, say
from cnncli.render.pictures import picture

_BAR = 20  # characters of a 100 % probability bar


def as_dict(result: PredictResult) -> dict[str, Any]:
    return {
        "model": result.model, "checkpoint": str(result.checkpoint), "dataset": result.dataset,
        "input": result.input, "top_k": result.top_k,
        "predictions": [{"file": str(p.path),
                         "top": [{"class": g.label, "name": g.name, "probability": g.probability}
                                 for g in p.guesses]} for p in result.predictions],
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


def show(result: PredictResult, fmt: str, console: Console) -> None:
    """Print the predictions (``table``: pictures and bars) or one JSON object (``json``)."""
    if fmt == "json":
        console.print(json.dumps(as_dict(result), indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    title = result.dataset_title
    say(console, Text.assemble((result.model, "bold"), f" · {result.checkpoint} · classes of {title} · "
                                                       f"input {result.input}"))
    colour = colour_on(console)
    for p in result.predictions:
        console.print()
        console.print(Columns([picture(p.pixels, colour), Group(_guesses(p, colour))], padding=(0, 2)))
