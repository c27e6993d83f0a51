"""Drawing ``cnncli explain``: the image and its map side by side, a legend, or the numbers as JSON.

The map (upsampled to the input) is coloured from the low end of its scale
(dark blue) to its high end (yellow) with the heat maps' colours
(:func:`cnncli.render.charts.viridis`) and blended half and half over the
image, two pixels per character cell (:func:`cnncli.render.pictures.picture`).
The scale runs from 0 (or the map's minimum, when occlusion made the class
more likely somewhere) to the map's maximum. Without colour (a pipe, a file,
``NO_COLOR``) the map is shaded with the charts' ``·░▒▓█`` beside the image
drawn as ``picture`` draws it. Both tiles are sized as ``features`` sizes its
maps (:func:`cnncli.render.features.fit`), two to a line within the width.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.columns import Columns
from rich.console import Console, Group
from rich.style import Style
from rich.text import Text

from cnncli.commands.explain import Explanation
from cnncli.render import colour_on, head_record, say, weights_head
from cnncli.render.charts import SHADES, viridis
from cnncli.render.features import MIN_CELLS, fit
from cnncli.render.pictures import picture

#: The image's share of a blended cell; the map's is the rest.
IMAGE_SHARE = 0.5
#: Cells of the colour legend.
LEGEND_CELLS = 16
#: Colour-scale steps of a blended map (uint8 levels are plenty for a terminal).
LEVELS = 255


def scale(result: Explanation) -> tuple[float, float]:
    """The map's colour scale (lo, hi): from 0, or the map's minimum when it is negative, to its maximum."""
    lo = min(0.0, float(result.map.min()))
    return lo, max(float(result.map.max()), lo)


def levels(result: Explanation) -> np.ndarray:
    """The upsampled map as uint8 (1, H, W) on :func:`scale` (0: the low end, 255: the high end)."""
    lo, hi = scale(result)
    span = hi - lo if hi > lo else 1.0
    return np.round((result.map - lo) / span * LEVELS).astype(np.uint8)[None]


def _palette() -> np.ndarray:
    return np.array([viridis(i / LEVELS) for i in range(LEVELS + 1)], dtype=np.float64)   # (256, 3)


def blend(pixels: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 image (1 or 3, H, W) and map levels (1, H, W) → the blended colour picture, uint8 (3, H, W)."""
    rgb = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels
    coloured = np.moveaxis(_palette()[heat[0]], -1, 0)
    return np.round(IMAGE_SHARE * rgb + (1 - IMAGE_SHARE) * coloured).astype(np.uint8)


def shaded(heat: np.ndarray) -> Text:
    """Map levels (1, H, W) → H/2 lines of W ``·░▒▓█`` cells, each the mean of its two pixels."""
    h = heat[0].astype(np.float64)
    if h.shape[0] % 2:
        h = np.concatenate([h, h[-1:]], axis=0)
    cells = (h[0::2] + h[1::2]) / 2 / LEVELS
    index = np.minimum((cells * len(SHADES)).astype(int), len(SHADES) - 1)
    return Text("\n".join("".join(SHADES[i] for i in row) for row in index), no_wrap=True)


def _what(result: Explanation) -> str:
    """What the map's values are, for the legend."""
    name = result.class_names[result.target]
    if result.method == "gradcam":
        return f"ReLU(Σ α_k·A_k) of layer {result.layer} for class {name}"
    if result.method == "saliency":
        return f"max over channels of |∂y/∂x| for class {name}"
    return f"drop of P({name}) with the square over the pixel (mean of the squares covering it)"


def _how(result: Explanation) -> str:
    """How the map was made, in one sentence."""
    (h, w), (rh, rw) = result.map.shape, result.raw.shape
    name = result.class_names[result.target]
    head = f"{result.title} of class {name} ({100 * result.probability:.1f} %)"
    if result.method == "gradcam":
        return (f"{head} at layer {result.layer} ({'×'.join(map(str, result.layer_shape))}), upsampled from "
                f"{rh}×{rw} to {h}×{w}")
    if result.method == "saliency":
        return f"{head}: the gradient of its score (before the softmax) at each input pixel, {h}×{w}"
    return (f"{head}: a {result.patch}×{result.patch} square of the training mean (0 after normalisation) at "
            f"{rh}×{rw} places {result.stride} pixels apart, {rh * rw} occluded images")


def _legend(result: Explanation, colour: bool) -> Text:
    lo, hi = scale(result)
    text = Text(no_wrap=False)
    text.append(f"{lo:.3g} ")
    if colour:
        for i in range(LEGEND_CELLS):
            r, g, b = viridis(i / (LEGEND_CELLS - 1))
            text.append(" ", Style(bgcolor=f"rgb({r},{g},{b})"))
    else:
        text.append(SHADES)
    text.append(f" {hi:.3g}: {_what(result)}")
    return text


def as_dict(result: Explanation) -> dict[str, Any]:
    """The JSON record: the class, its probability, the method and its settings, and the raw map."""
    record = {
        "model": result.model, "weights": str(result.weights), "image": result.source, "label": result.label,
        "input": result.input, "method": result.method, "class": result.target,
        "name": result.class_names[result.target], "probability": result.probability,
        "prediction": [{"class": g.label, "name": g.name, "probability": g.probability} for g in result.guesses],
        "layer": result.layer,
        "map_shape": list(result.raw.shape), "upsampled_shape": list(result.map.shape),
        "map": np.round(result.raw, 8).tolist(),
        "warnings": [{"kind": w.kind, "message": w.message} for w in result.warnings],
        "head": head_record(result.head),
    }
    if result.method == "gradcam":
        record.update(layer_shape=list(result.layer_shape),
                      channel_weights=np.round(result.channel_weights, 8).tolist())
    if result.method == "occlusion":
        record.update(patch=result.patch, stride=result.stride, grey="the training mean (0 after normalisation)")
    return record


def show(result: Explanation, fmt: str, console: Console, out: Path | None = None) -> None:
    """Draw the map over the image (``table``) or print its numbers (``json``); ``out``: a PNG/SVG/PDF too."""
    from cnncli.render import figures

    path = None
    if out is not None:
        path = str(figures.save(figures.explain_figure(result), out))
    if fmt == "json":
        record = {**as_dict(result), **({"file": path} if path else {})}
        console.print(json.dumps(record), markup=False, highlight=False, soft_wrap=True)
        return
    colour = colour_on(console)
    cells = max((console.width - 2) // 2, MIN_CELLS)
    guesses = ", ".join(f"{g.name} {100 * g.probability:.1f} %" for g in result.guesses)
    say(console, f"{result.model} with {result.weights}: {result.source}; input {result.input}")
    if result.head:
        say(console, weights_head(result.head))
    say(console, f"prediction: {guesses}")
    for w in result.warnings:
        say(console, f"warning: {w.message}")
    say(console, _how(result))
    heat = fit(levels(result), cells)
    image = fit(result.pixels, cells)
    drawn = picture(blend(image, heat), True) if colour else shaded(heat)
    console.print(Columns([Group(Text("input", no_wrap=True), picture(image, colour)),
                           Group(Text(f"{result.title} {'over the input' if colour else 'map'}", no_wrap=True,
                                      overflow="ellipsis"), drawn)], padding=(0, 2)))
    say(console, _legend(result, colour))
    lo, hi = scale(result)
    if hi <= lo:
        say(console, f"the map is {hi:.3g} everywhere: it singles out no part of the image")
    if path:
        say(console, f"wrote {path}")
