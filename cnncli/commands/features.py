"""``cnncli features``: what a trained network's layers make of one image (the lecture's slide 39).

One image — a test image of the checkpoint's dataset (``--sample I``) or an
image file (``--image FILE``, read as ``predict`` reads it) — goes through the
network the way evaluation sends it (the run's input adaptation and
normalisation); an image file that looks inverted against the training
images gets a warning (:func:`cnncli.commands.predict.polarity_warning`). Every layer's
output is kept (a plain, unfused network), and for each chosen layer (every
convolution by default; a block named by ``--layer`` stands for its output,
:mod:`cnncli.model.naming`) the activation maps of its first ``max_maps`` channels
are returned with their statistics, together with the first convolution's
filters and the network's prediction.

For display, each map (and each filter) is scaled on its own from its minimum
(black) to its maximum (white): a map's shape is what it shows, not its
magnitude, which is in the statistics (min, max, mean and the share of zeros,
a ReLU's inactive units).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli import extras
from cnncli.commands import tasks
from cnncli.commands.predict import Guess, InputWarning, one_image
from cnncli.engine import losses
from cnncli.errors import UsageError
from cnncli.model import naming
from cnncli.model.head import HeadChange
from cnncli.records import trained

#: Channels of a layer shown unless --max-maps says otherwise.
MAX_MAPS = 16


@dataclass(frozen=True)
class MapStats:
    channel: int
    min: float
    max: float
    mean: float
    zeros: float              # share of exactly-zero values (inactive ReLU units)


@dataclass(frozen=True)
class LayerMaps:
    """One layer's output for the image: ``shape`` (C, H, W), the first channels as uint8 pictures."""

    name: str
    kind: str
    shape: tuple[int, int, int]
    values: np.ndarray        # float (shown, H, W): the raw activations of the shown channels
    pictures: np.ndarray      # uint8 (shown, H, W), each map scaled from its min to its max
    stats: list[MapStats]


@dataclass(frozen=True)
class Filters:
    """The first convolution's filters as pictures: uint8 (out, 3 or 1, kh, kw), each scaled on its own."""

    layer: str
    shape: tuple[int, ...]    # the weight's (out, in, kh, kw)
    values: np.ndarray
    pictures: np.ndarray


@dataclass(frozen=True)
class FeatureResult:
    model: str
    checkpoint: Path
    source: str               # what the image is, in words
    pixels: np.ndarray        # uint8 (C, H, W): the image as the dataset has it
    label: int | None         # the true class of a test image
    class_names: list[str]
    guesses: list[Guess]      # a classifier's top classes; a detector's boxes (probability: the box's score)
    input: str                # the adaptation, in words
    layers: list[LayerMaps]
    filters: Filters | None
    warnings: tuple[InputWarning, ...] = ()   # about an image file (predict's polarity check)
    head: tuple[HeadChange, ...] = ()         # heads sized as the weights file holds them (it records no classes)
    boxes: bool = False                       # the guesses are a detector's boxes


def scale_to_bytes(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``a`` scaled to 0..255 over ``axes`` (min → 0, max → 255); a constant block is black."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.round((a - lo) / span * 255).astype(np.uint8)


def _choose_layers(graph, wanted: list[str] | None, model: str | None = None) -> list:
    if not wanted:
        chosen = [n for n in graph.nodes if n.kind == "conv"]
        if not chosen:
            raise UsageError("the model has no convolution; name the layers to show with --layer")
        return chosen
    return [map_layer(graph, name, model) for name in wanted]


def map_layer(graph, name: str, model: str | None = None):
    """The node ``--layer NAME`` names, a layer or a block's output (:func:`cnncli.model.naming.resolve`;
    ``model``: the model as the user gave it), whose output must be maps (C, H, W); UsageError otherwise."""
    named = naming.resolve(graph.spec, name, "--layer", nodes=[n.spec for n in graph.nodes], model=model)
    node = graph[named.output]
    if len(node.out_shape) != 3:
        which = f" (block {name}'s last layer, {node.name})" if named.is_block else ""
        raise UsageError(f"--layer {name}: its output{which} is {'×'.join(map(str, node.out_shape))}, not maps "
                         "(channels × height × width); choose a layer before the flatten")
    return node


def features(model: str, checkpoint: Path, *, sample: int | None = None, image: Path | None = None,
             layers: list[str] | None = None, max_maps: int = MAX_MAPS, dataset: str | None = None,
             data_dir: Path | None = None, invert: bool = False, top_k: int | None = None,
             progress=None, skip_model_check: bool = False) -> FeatureResult:
    """The activation maps of ``layers`` (every convolution by default) for one image (``checkpoint``, or
    published weights by name, refused when trained for another network, unless ``skip_model_check``);
    ``progress`` receives download events (of the dataset, of published weights)."""
    if (sample is None) == (image is None):
        raise UsageError("give one image: --sample I (a test image of the dataset) or --image FILE")
    if max_maps < 1:
        raise UsageError(f"--max-maps must be at least 1, got {max_maps}")
    if image is not None:
        extras.require("images", "reading image files (--image)")
    # An image file needs no data: the classes and statistics the checkpoint recorded do.
    loaded = trained.load(model, checkpoint, dataset=dataset, data_dir=data_dir,
                          data=trained.RECORDED if image is not None else trained.OPEN, progress=progress,
                          skip_model_check=skip_model_check, fast=False)
    graph, info, plan, net = loaded.graph, loaded.source, loaded.plan, loaded.network
    chosen = _choose_layers(graph, layers, model)

    picked = one_image(info, sample=sample, image=image, invert=invert, data_dir=data_dir, progress=progress)
    pixels = picked.pixels

    loss = losses.get(loaded.spec.loss)
    out = net.forward(plan.batch(pixels[None], net.dtype, info.normalise))
    k = trained.default_top_k(len(info.classes)) if top_k is None else top_k
    task = tasks.of(graph)
    if isinstance(task, tasks.Detection):  # a detector's guesses: the boxes it finds, best first, and their scores
        found, scores = task.find(out)
        guesses = [Guess(int(c), info.classes[c], float(s)) for c, s in zip(found.classes[:k], scores[:k])]
    else:
        probs = loss.probabilities(out)[0]
        order = np.argsort(-probs, kind="stable")[:min(k, len(info.classes))]
        guesses = [Guess(int(i), info.classes[i], float(probs[i])) for i in order]

    maps = []
    for node in chosen:
        value = np.asarray(net.values[node.name][0], dtype=np.float64)
        shown = value[:max_maps]
        stats = [MapStats(c, float(m.min()), float(m.max()), float(m.mean()), float(np.mean(m == 0)))
                 for c, m in enumerate(shown)]
        maps.append(LayerMaps(node.name, node.kind, tuple(value.shape), shown, scale_to_bytes(shown, (1, 2)), stats))

    filters = None
    first = next((n for n in graph.nodes if n.kind == "conv"), None)
    if first is not None:
        w = np.asarray(net.params[f"{first.name}.weight"], dtype=np.float64)
        # Three input channels are a colour filter; otherwise each filter's first input channel.
        shown_w = w if w.shape[1] == 3 else w[:, :1]
        filters = Filters(first.name, tuple(w.shape), shown_w, scale_to_bytes(shown_w, (1, 2, 3)))
    return FeatureResult(loaded.spec.name, Path(checkpoint), picked.what, pixels, picked.label, list(info.classes),
                         guesses, plan.describe(), maps, filters, picked.warnings, loaded.head,
                         boxes=isinstance(task, tasks.Detection))
