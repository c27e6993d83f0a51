"""``cnncli explain``: which parts of one image a trained network's decision rests on.

One image (a test image of the checkpoint's dataset, ``--sample I``, or an
image file, ``--image FILE``, read as ``predict`` reads it) goes through the
network as evaluation sends it (the run's input adaptation and normalisation),
and one class's decision is traced back to the image by one of three methods
(:data:`METHODS`, a registry):

* **gradcam** (Selvaraju et al. 2017, Grad-CAM): the gradient of the class
  score y_c with respect to the activations A (C, h, w) of one layer, averaged
  over each channel's plane, weighs that channel: α_k = mean_ij ∂y_c/∂A_kij,
  map = ReLU(Σ_k α_k A_k), (h, w), upsampled bilinearly to the input's (H, W).
  The default layer (:func:`default_layer`) is the last one whose output is a
  spatial map (C, h, w) with h, w > 1 and that computes features rather than
  pooling or passing them on (``PASS_ON``): the last convolutional block's
  output, after its activation (VGG-16's conv5_3 ReLU, as in the paper; a
  ResNet's last residual block's add and ReLU; LeNet-5's C3 tanh).
  ``--layer`` names a layer or a block (:mod:`cnncli.model.naming`): a block
  stands for its output, so ``--layer layer2`` is a ResNet's second stage as
  the layers after it see it (the default is the last stage's output).
* **saliency** (Simonyan et al. 2014): max over the input channels of
  |∂y_c/∂x|, (H, W), at the input's own resolution.
* **occlusion** (Zeiler & Fergus 2014, the lecture's slide 39): a square of
  ``patch`` pixels slides over the input in steps of ``stride``; each occluded
  copy's probability of the class is subtracted from the unoccluded image's.
  The square is "grey" in the sense of the training data: zero after the
  dataset's normalisation, i.e. each channel's mean training pixel. The raw
  map is the drop at each position of the square, (positions down, across);
  upsampled, each pixel gets the mean drop of the squares that cover it. The
  occluded copies go through the fast inference network in batches.

The class score y_c is the output the loss reads before its softmax (the
logits; :func:`score_node`), as in both gradient papers: the softmax's
gradient would also depend on every other class. The gradients come from the
engine's plain network (:meth:`cnncli.engine.network.Network.gradients`) after
a forward pass in inference mode: batch norm uses its running statistics and
dropout passes everything, as when the network predicts.

Shapes: the image ``pixels`` is uint8 (C, H, W) as the model takes it (after
the border or crop of :mod:`cnncli.records.inputs`; grey stays one channel); ``raw``
is the map at its own resolution, ``map`` (H, W) at the input's, both float64.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli import extras
from cnncli.commands import tasks
from cnncli.commands.features import map_layer
from cnncli.commands.predict import Guess, InputWarning, one_image
from cnncli.data.source import Source
from cnncli.engine import losses
from cnncli.engine.network import Network
from cnncli.errors import UsageError
from cnncli.model import spec
from cnncli.model.graph import Graph, Node, ancestors
from cnncli.model.head import HeadChange
from cnncli.records import checkpoint as ckpt_io
from cnncli.records import inputs, trained
from cnncli.words import count, listed

#: Layer kinds that pool, resample or pass on a block's output rather than compute features of their own:
#: Grad-CAM's default layer is the last spatial output of another kind.
PASS_ON = ("maxpool", "avgpool", "adaptive_avgpool", "subsample", "dropout")
#: Final squashing layers: the class score is their input (a loss that fuses the softmax reads it already).
SQUASHING = ("softmax", "sigmoid")
#: Occluded copies per forward pass of the fast network.
OCCLUSION_BATCH = 32
#: Guesses listed besides the explained class.
TOP_K = 3


@dataclass(frozen=True)
class Subject:
    """A trained network and one image for it: what every method works on."""

    model_spec: spec.ModelSpec
    graph: Graph
    saved: ckpt_io.Checkpoint
    info: Source
    plan: inputs.InputPlan
    network: Network          # holding the weights: the fast inference network or the plain one
    pixels: np.ndarray        # uint8 (C, H, W): the image as the dataset has it
    label: int | None         # the true class of a test image
    source: str               # what the image is, in words
    warnings: tuple[InputWarning, ...]
    head: tuple[HeadChange, ...] = ()  # heads sized as the weights file holds them (it records no classes)

    def batch(self, dtype) -> np.ndarray:
        """The image as the network's input batch, float (1, C', H', W')."""
        return self.plan.batch(self.pixels[None], dtype, self.info.normalise)


@dataclass(frozen=True)
class Explanation:
    """One class's decision for one image, as a map over the image."""

    model: str
    weights: Path
    source: str
    pixels: np.ndarray        # uint8 (C, H, W): the image as the model takes it (border or crop made)
    label: int | None
    class_names: list[str]
    target: int               # the explained class
    probability: float        # its probability for the image
    guesses: list[Guess]
    method: str               # a key of METHODS
    raw: np.ndarray           # float64, the map at its own resolution
    map: np.ndarray           # float64 (H, W), upsampled to the input
    input: str                # the adaptation, in words
    layer: str | None = None  # gradcam: the layer and its output's (C, h, w)
    layer_shape: tuple[int, ...] | None = None
    channel_weights: np.ndarray | None = None   # gradcam: α_k, (C,)
    patch: int | None = None  # occlusion: the square's side and step, in input pixels
    stride: int | None = None
    warnings: tuple[InputWarning, ...] = ()
    head: tuple[HeadChange, ...] = ()  # heads sized as the weights file holds them (it records no classes)

    @property
    def title(self) -> str:
        return METHODS[self.method].title


@dataclass(frozen=True)
class Settings:
    """The flags of one method: ``layer`` for gradcam, ``patch`` and ``stride`` for occlusion."""

    layer: str | None = None
    patch: int | None = None
    stride: int | None = None


@dataclass(frozen=True)
class Pass:
    """What a method works on: the network just after its forward pass of the image ``x`` (1, C, H, W) in
    inference mode, the class ``target`` to explain and its ``probability``."""

    subject: Subject
    net: Network
    x: np.ndarray
    target: int
    probability: float
    settings: Settings

    @property
    def loss(self) -> losses.Loss:
        return losses.get(self.subject.model_spec.loss)


@dataclass(frozen=True)
class Method:
    """A way to explain a decision: its name in titles, the flags it takes, the network it runs on (``fast``:
    the fast inference network, else the plain one that keeps every value and gradient) and its computation
    (a :class:`Pass` → the :class:`Explanation`'s fields ``raw``, ``map`` and its own)."""

    title: str
    flags: tuple[str, ...]    # of Settings' fields
    fast: bool
    run: Callable[[Pass], dict]


# ----------------------------------------------------------------------------------------- loading

def load_subject(model: str, weights: Path, *, sample: int | None, image: Path | None, dataset: str | None,
                 data_dir: Path | None, invert: bool, progress=None, skip_model_check: bool = False,
                 fast: bool = True) -> Subject:
    """The network of ``model`` with ``weights`` (:func:`cnncli.records.trained.load`; ``fast``: the inference network,
    else the plain one) and one image (:func:`cnncli.commands.predict.one_image`): test image ``sample`` of the dataset,
    or the file ``image``, which needs no data (the checkpoint's record of it does)."""
    if (sample is None) == (image is None):
        raise UsageError("give one image: --sample I (a test image of the dataset) or --image FILE")
    if image is not None:
        extras.require("images", "reading image files (--image)")
    loaded = trained.load(model, weights, dataset=dataset, data_dir=data_dir,
                          data=trained.RECORDED if image is not None else trained.OPEN, progress=progress,
                          skip_model_check=skip_model_check, fast=fast)
    if tasks.detects(loaded.spec):
        raise UsageError(f"explain shows what a classifier's decision rests on; {loaded.spec.name} is a detector: "
                         "`cnncli backprop-trace` with --sample I shows each object, the box answering for it and its "
                         "loss, and `cnncli features` its layers' maps")
    picked = one_image(loaded.source, sample=sample, image=image, invert=invert, data_dir=data_dir,
                       progress=progress)
    return Subject(loaded.spec, loaded.graph, loaded.checkpoint, loaded.source, loaded.plan, loaded.network,
                   picked.pixels, picked.label, picked.what, picked.warnings, loaded.head)


# ------------------------------------------------------------------------------------ the choices

def score_node(graph: Graph, loss: losses.Loss) -> str:
    """The node whose output holds the class scores y before any softmax: what the loss reads, or the input
    of a final softmax or sigmoid that the loss does not fuse."""
    name = loss.source(graph)
    node = graph[name]
    return node.inputs[0] if node.kind in SQUASHING else name


def _feeding(graph: Graph, score: str) -> set[str]:
    return ancestors({n.name: n.inputs for n in graph.nodes}, [score])


def _is_map(node: Node) -> bool:
    return len(node.out_shape) == 3


def default_layer(graph: Graph, score: str) -> Node:
    """Grad-CAM's layer unless ``--layer`` says: the last node feeding ``score`` whose output is a map
    (C, h, w) with h, w > 1 and whose kind is not in :data:`PASS_ON`."""
    feeding = _feeding(graph, score)
    found = [n for n in graph.nodes if n.name in feeding and _is_map(n) and min(n.out_shape[1:]) > 1
             and n.kind not in PASS_ON]
    if not found:
        raise UsageError(f"model '{graph.spec.name}' has no layer whose output is a spatial map (channels × height "
                         "× width, more than 1×1), which Grad-CAM needs: use --method saliency or occlusion")
    return found[-1]


def choose_layer(graph: Graph, score: str, name: str | None, model: str | None = None) -> Node:
    """The node ``--layer NAME`` names, a layer or a block's output (:mod:`cnncli.model.naming`; a map feeding
    the scores), or :func:`default_layer`; ``model``: the model as the user gave it, for messages."""
    if name is None:
        return default_layer(graph, score)
    node = map_layer(graph, name, model)
    if node.name not in _feeding(graph, score):
        which = "" if node.name == name else f" (its output, {node.name})"
        raise UsageError(f"--layer {name}: the class scores ('{score}') do not depend on it{which}")
    return node


def choose_class(wanted: str | None, classes: list[str], predicted: int) -> int:
    """``--class``: a class's name, else its index (0..K-1); None: the predicted class."""
    if wanted is None:
        return predicted
    if wanted in classes:
        return classes.index(wanted)
    try:
        index = int(wanted)
    except ValueError:
        close = difflib.get_close_matches(wanted, classes, n=3)
        hint = f" — did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UsageError(f"--class {wanted}: not a class name or index{hint} (the classes: "
                         f"{listed(classes, 10)}, or their index 0..{len(classes) - 1})") from None
    if not 0 <= index < len(classes):
        raise UsageError(f"--class {wanted} is out of range: the model has {count(len(classes), 'class')} "
                         f"(0..{len(classes) - 1})")
    return index


def default_patch(height: int, width: int) -> tuple[int, int]:
    """Occlusion's square and step for an input of ``height`` × ``width``: an eighth of the shorter side (4 on
    MNIST's 28 and CIFAR's 32, 28 on ImageNet's 224), moved by half of it."""
    patch = max(1, math.ceil(min(height, width) / 8))
    return patch, max(1, math.ceil(patch / 2))


def positions(size: int, patch: int, stride: int) -> list[int]:
    """Where a square of ``patch`` starts along a side of ``size``: every ``stride``, and flush with the end."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def check_settings(method: str, settings: Settings) -> None:
    """A flag only another method takes, or a square of less than a pixel: UsageError."""
    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    for flag in ("layer", "patch", "stride"):
        if getattr(settings, flag) is not None and flag not in METHODS[method].flags:
            users = [name for name, m in METHODS.items() if flag in m.flags]
            raise UsageError(f"--{flag} is an option of --method {' or '.join(users)}, not of {method}")
    for flag in ("patch", "stride"):
        value = getattr(settings, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be at least 1 pixel, got {value}")


# --------------------------------------------------------------------------------------- the maps

def upsample(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of a map (h, w) to ``size`` (H, W), pixel centres aligned as PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)`` and OpenCV's ``resize`` do."""
    a = np.asarray(a, dtype=np.float64)

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    (y0, y1, fy), (x0, x1, fx) = axis(a.shape[0], size[0]), axis(a.shape[1], size[1])
    rows = a[y0] * (1 - fy)[:, None] + a[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def _class_seed(run: Pass, score: str) -> np.ndarray:
    """A one-hot of the explained class in the shape of the score node's output (1, K)."""
    value = run.net.values[score]
    seed = np.zeros(value.shape, dtype=value.dtype)
    seed[0, run.target] = 1
    return seed


def grad_cam(run: Pass) -> dict:
    """α_k = mean over the plane of ∂y_c/∂A_k at the layer; map = ReLU(Σ_k α_k A_k), upsampled."""
    graph = run.subject.graph
    score = score_node(graph, run.loss)
    node = choose_layer(graph, score, run.settings.layer)
    grads = run.net.gradients(score, _class_seed(run, score), at=(node.name,))
    a = np.asarray(run.net.values[node.name][0], dtype=np.float64)       # (C, h, w)
    alpha = np.asarray(grads[node.name][0], dtype=np.float64).mean(axis=(1, 2))
    raw = np.maximum(np.tensordot(alpha, a, axes=1), 0.0)                 # (h, w)
    return {"raw": raw, "map": upsample(raw, run.x.shape[2:]), "layer": node.name,
            "layer_shape": tuple(node.out_shape), "channel_weights": alpha}


def saliency(run: Pass) -> dict:
    """max over the input channels of |∂y_c/∂x|, (H, W)."""
    score = score_node(run.subject.graph, run.loss)
    dx = run.net.gradients(score, _class_seed(run, score))["input"][0]
    raw = np.abs(np.asarray(dx, dtype=np.float64)).max(axis=0)
    return {"raw": raw, "map": raw}


def occlusion_square(settings: Settings, height: int, width: int) -> tuple[int, int]:
    """Occlusion's (patch, stride): the flags', else :func:`default_patch`'s (with ``--patch`` alone, a step of
    half of it); UsageError when the square does not fit or leaves pixels uncovered."""
    patch, stride = default_patch(height, width)
    if settings.patch is not None:
        patch, stride = settings.patch, max(1, math.ceil(settings.patch / 2))
    stride = settings.stride or stride
    if patch > min(height, width):
        raise UsageError(f"--patch {patch} is larger than the model's {height}×{width} input")
    if stride > patch:
        raise UsageError(f"--stride {stride} is more than the square's side ({patch}): the pixels between two "
                         "squares would never be covered")
    return patch, stride


def occlusion(run: Pass) -> dict:
    """The drop of the class's probability with each grey square over the image; see the module docstring."""
    x, net, loss = run.x, run.net, run.loss
    _, _, h, w = x.shape
    patch, stride = occlusion_square(run.settings, h, w)
    ys, xs = positions(h, patch, stride), positions(w, patch, stride)
    spots = [(y, x0) for y in ys for x0 in xs]

    def occluded(which: np.ndarray) -> np.ndarray:
        batch = np.repeat(x, len(which), axis=0)
        for b, k in enumerate(which):
            y, x0 = spots[k]
            batch[b, :, y:y + patch, x0:x0 + patch] = 0  # the training mean, after normalisation
        return batch

    out = net.predict(np.arange(len(spots)), OCCLUSION_BATCH, loss.source(run.subject.graph), prepare=occluded)
    drops = run.probability - loss.probabilities(out)[:, run.target].astype(np.float64)
    total, covered = np.zeros((h, w)), np.zeros((h, w))
    for (y, x0), d in zip(spots, drops):
        total[y:y + patch, x0:x0 + patch] += d
        covered[y:y + patch, x0:x0 + patch] += 1
    return {"raw": drops.reshape(len(ys), len(xs)), "map": total / covered, "patch": patch, "stride": stride}


#: The methods by ``--method`` name, the default first.
METHODS: dict[str, Method] = {
    "gradcam": Method("Grad-CAM", ("layer",), False, grad_cam),
    "saliency": Method("saliency", (), False, saliency),
    "occlusion": Method("occlusion", ("patch", "stride"), True, occlusion),
}


# ------------------------------------------------------------------------------------------ explain

def explain(model: str, weights: Path, *, sample: int | None = None, image: Path | None = None,
            method: str = "gradcam", target: str | None = None, layer: str | None = None,
            patch: int | None = None, stride: int | None = None, dataset: str | None = None,
            data_dir: Path | None = None, invert: bool = False, progress=None,
            skip_model_check: bool = False) -> Explanation:
    """Explain the network's decision for class ``target`` (a name or an index; default: the predicted class)
    on one image by ``method`` (a key of :data:`METHODS`)."""
    settings = Settings(layer, patch, stride)
    check_settings(method, settings)
    how = METHODS[method]
    subject = load_subject(model, weights, sample=sample, image=image, dataset=dataset, data_dir=data_dir,
                           invert=invert, progress=progress, skip_model_check=skip_model_check, fast=how.fast)
    graph, loss = subject.graph, losses.get(subject.model_spec.loss)
    if "layer" in how.flags:
        choose_layer(graph, score_node(graph, loss), layer, model)
    if "patch" in how.flags:
        occlusion_square(settings, *graph.input_shape[1:])
    classes = list(subject.info.classes)
    if target is not None:
        choose_class(target, classes, 0)  # a wrong class is told before the network runs
    net = subject.network
    try:
        x = subject.batch(net.dtype)
        source = loss.source(graph)
        net.forward(x, train=False, keep=(source,))
        probs = loss.probabilities(net.values[source])[0].astype(np.float64)
        order = np.argsort(-probs, kind="stable")[:min(TOP_K, len(classes))]
        chosen = choose_class(target, classes, int(order[0]))
        found = how.run(Pass(subject, net, x, chosen, float(probs[chosen]), settings))
    finally:
        net.close()
    pixels = np.ascontiguousarray(subject.plan.adapt(subject.pixels[None])[0])
    return Explanation(subject.model_spec.name, Path(weights), subject.source, pixels, subject.label, classes,
                       chosen, float(probs[chosen]), [Guess(int(i), classes[i], float(probs[i])) for i in order],
                       method, input=subject.plan.describe(), warnings=subject.warnings, head=subject.head,
                       **found)
