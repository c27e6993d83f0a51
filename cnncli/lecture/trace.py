"""``cnncli backprop-trace``: one exact forward and backward pass, recorded for display.

Every number comes from the engine (:class:`~cnncli.engine.network.Network`, its
layers and :mod:`cnncli.engine.losses`) in float64; this module only arranges them
into records, and :mod:`cnncli.render.trace` draws them. Four views:

* **worked** — a small chain of dense layers (``slide-mlp``, the lecture's
  3-3-3-3 example of slides 4–24): the forward products ``[x]×[W]+[b]``, the
  error term by term, then per layer from the output back the chain-rule
  factors, δW and the updated W. ``--compare-slides`` sets every number the
  lecture prints beside its step-local recomputation (:mod:`cnncli.lecture.slides`)
  and the exact value computed here.
* **conv** — ``slide-conv``: slides 26–27, one filter over one small image.
* **pool** — ``slide-maxpool``, ``slide-avgpool``: slide 28, which input cell
  receives which share of each output's gradient.
* **network** — any other model: per-layer activation and gradient statistics
  from the output back to the input, to see gradients vanish (VGG) or not (ResNet).
* **detection** — a detector (a ``yolo`` head) on a test image and its boxes
  (``--sample``): the network view, plus the loss term by term and, for each
  object, the cell and the box responsible for it, the box it predicts, their IoU
  and what the object costs (:func:`cnncli.engine.yolo.responsible`).

The three ``slide-conv/pool`` names are trace modes, not model files: they
live in :data:`MODES`. ``run`` is what the CLI calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnncli import atomic
from cnncli.atomic import write_atomic
from cnncli.engine import losses as losses_mod
from cnncli.engine import optim, yolo
from cnncli.engine.boxes import from_yolo, iou
from cnncli.engine.elementwise import sigmoid
from cnncli.engine.heads import HEADS
from cnncli.engine.network import Network
from cnncli.errors import UnknownModel, UsageError
from cnncli.model import graph as graph_mod
from cnncli.model import spec
from cnncli.model.kinds import fmt_shape
from cnncli.records import checkpoint, trained
from cnncli.words import count

# Index letters of successive layers' units, as the slides name them (i → j → k → l).
INDEX_LETTERS = "ijklmnpqrstuvw"

# A dense chain this narrow is shown entry by entry; anything wider gets per-layer statistics.
WORKED_MAX_WIDTH = 10
WORKED_ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "softmax")

# The lecture's example input and target (slides 5 and 8); the weights are in models/slide-mlp.yaml.
EXAMPLES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "slide-mlp": ((0.1, 0.2, 0.7), (1.0, 0.0, 0.0)),
}

# Seed of the random input drawn when a model is traced without --input/--sample.
INPUT_SEED = 0


# ----------------------------------------------------------------------------------- records

def _floats(a: np.ndarray | None) -> Any:
    return None if a is None else np.asarray(a, dtype=float).tolist()


@dataclass
class StepLoss:
    """The error after ``step`` updates (0: the starting weights)."""

    step: int
    loss: float


@dataclass
class WorkedLayer:
    """One dense layer and the activation after it, forward and backward, batch of one.

    ``rows``/``cols`` are the index letters of its input and output units
    (``'k'``, ``'l'`` for W_kl). ``jacobian[a, b]`` is ∂out_a/∂in_b, computed by
    the activation layer's own backward pass. ``grad_out`` is ∂E/∂out,
    ``grad_in`` ∂E/∂in (the dense output), ``grad_x`` ∂E/∂(this layer's input).
    """

    name: str
    act_node: str | None
    activation: str | None
    rows: str
    cols: str
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    z: np.ndarray
    out: np.ndarray
    grad_out: np.ndarray
    jacobian: np.ndarray
    grad_in: np.ndarray
    grad_x: np.ndarray
    grad_weight: np.ndarray
    grad_bias: np.ndarray | None
    new_weight: np.ndarray
    new_bias: np.ndarray | None

    @property
    def elementwise(self) -> bool:
        """True when ∂out/∂in is diagonal, so the slides' one-factor-per-unit product is exact."""
        j = self.jacobian
        return bool(np.all(j == np.diag(np.diag(j))))

    @property
    def diagonal_only(self) -> np.ndarray:
        """∂E/∂out_l · ∂out_l/∂in_l: what ∂E/∂in_l would be if only the Jacobian's diagonal counted."""
        return self.grad_out * np.diag(self.jacobian)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "activation": self.activation, "indices": self.rows + self.cols,
            "input": _floats(self.x), "weight": _floats(self.weight), "bias": _floats(self.bias),
            "pre_activation": _floats(self.z), "output": _floats(self.out),
            "grad_output": _floats(self.grad_out), "jacobian": _floats(self.jacobian),
            "grad_pre_activation": _floats(self.grad_in), "grad_input": _floats(self.grad_x),
            "grad_weight": _floats(self.grad_weight), "grad_bias": _floats(self.grad_bias),
            "new_weight": _floats(self.new_weight), "new_bias": _floats(self.new_bias),
        }


@dataclass
class WorkedTrace:
    """The lecture's worked step for a small dense network: forward, error, backward, update."""

    model: str
    loss_name: str
    loss: float
    lr: float
    x: np.ndarray
    target: np.ndarray
    output: np.ndarray
    output_kind: str
    terms: np.ndarray                  # per-output error terms, Σ = loss
    layers: list[WorkedLayer]          # in network order; shown from the last one back
    steps: list[StepLoss]
    input_source: str
    slides: list[Any] | None = None    # cnncli.lecture.slides.SlideCheck, with --compare-slides
    slips: list[str] | None = None
    slide_notes: tuple[str, ...] = ()
    dump: str | None = None
    mode: str = "worked"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mode": self.mode, "model": self.model, "loss_name": self.loss_name, "loss": self.loss,
            "lr": self.lr, "input": _floats(self.x), "target": _floats(self.target),
            "output": _floats(self.output), "error_terms": _floats(self.terms),
            "reduction": "mean over the batch (one sample: the sum over outputs)",
            "layers": [layer.to_dict() for layer in self.layers],
            "steps": [{"step": s.step, "loss": s.loss} for s in self.steps],
        }
        if self.slides is not None:
            d["slides"] = [{"step": c.step, "slide_number": c.slide, "printed": c.printed,
                            "slide": c.slide_value, "recomputed": c.recomputed, "exact": c.exact,
                            "match": c.match, "reason": c.reason} for c in self.slides]
            d["slips"] = list(self.slips or [])
        if self.dump:
            d["dump"] = self.dump
        return d


@dataclass
class Product:
    """One product ``a·b`` of a written-out sum, symbols and values."""

    a: str
    b: str
    va: float
    vb: float


@dataclass
class WrittenSum:
    """``lhs = Σ products = value``; ``value`` is the engine's, the products spell the index structure."""

    lhs: str
    terms: list[Product]
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"lhs": self.lhs, "terms": [[t.a, t.b] for t in self.terms],
                "numbers": [[t.va, t.vb] for t in self.terms], "value": self.value}


@dataclass
class ConvTrace:
    """Slides 26–27: O = X ⋆ F (valid cross-correlation, stride 1, no bias), and its gradients."""

    x: np.ndarray
    filter: np.ndarray
    output: np.ndarray
    upstream: np.ndarray
    grad_filter: np.ndarray
    grad_input: np.ndarray
    forward: list[WrittenSum]
    filter_sums: list[WrittenSum]
    input_sums: list[WrittenSum]
    dump: str | None = None
    mode: str = "conv"

    def to_dict(self) -> dict[str, Any]:
        d = {"mode": self.mode, "input": _floats(self.x), "filter": _floats(self.filter),
             "output": _floats(self.output), "upstream": _floats(self.upstream),
             "grad_filter": _floats(self.grad_filter), "grad_input": _floats(self.grad_input),
             "forward": [s.to_dict() for s in self.forward],
             "grad_filter_sums": [s.to_dict() for s in self.filter_sums],
             "grad_input_sums": [s.to_dict() for s in self.input_sums]}
        if self.dump:
            d["dump"] = self.dump
        return d


@dataclass
class PoolTrace:
    """Slide 28: a pooling layer's forward windows and where each output's gradient goes.

    ``shares[p, q, r, c]`` is ∂X_rc-gradient per unit of ∂E/∂O_pq: the engine's
    backward pass seeded with one output at a time.
    """

    kind: str                          # "max" or "avg"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    x: np.ndarray
    output: np.ndarray
    upstream: np.ndarray
    grad_input: np.ndarray
    windows: list[list[tuple[int, int]]]   # per output, row-major: the input cells it reads
    shares: np.ndarray
    dump: str | None = None

    @property
    def mode(self) -> str:
        return f"{self.kind}pool"

    def to_dict(self) -> dict[str, Any]:
        oh, ow = self.output.shape
        d = {"mode": self.mode, "kernel": list(self.kernel), "stride": list(self.stride),
             "input": _floats(self.x), "output": _floats(self.output), "upstream": _floats(self.upstream),
             "grad_input": _floats(self.grad_input),
             "windows": [[[r + 1, c + 1] for r, c in w] for w in self.windows],
             "shares": [[{"output": [p + 1, q + 1], "share": float(self.shares[p, q, r, c])}
                         for p in range(oh) for q in range(ow) if self.shares[p, q, r, c] != 0]
                        for r in range(self.x.shape[0]) for c in range(self.x.shape[1])]}
        if self.dump:
            d["dump"] = self.dump
        return d


@dataclass
class LayerStats:
    """One node of a traced network: its activation and the gradients reaching it."""

    name: str
    kind: str
    shape: tuple[int, ...]
    mean: float
    std: float
    dead: float | None                 # ReLU outputs that are exactly 0 (no gradient passes)
    grad_norm: float | None            # ‖∂E/∂activation‖, None when no gradient reaches it
    weight_norm: float | None
    weight_grad_norm: float | None
    update_ratio: float | None         # lr·‖∂E/∂W‖ / ‖W‖: the SGD step relative to the weights

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "mean": self.mean,
                "std": self.std, "dead_fraction": self.dead, "grad_norm": self.grad_norm,
                "weight_norm": self.weight_norm, "weight_grad_norm": self.weight_grad_norm,
                "update_ratio": self.update_ratio}


@dataclass
class NetworkTrace:
    """Any model: one forward and backward pass in float64, per layer from the output back."""

    model: str
    loss_name: str
    loss: float
    lr: float
    input_shape: tuple[int, ...]
    input_source: str
    target: str
    predicted: int | None
    train_mode_layers: list[str]        # layers that behave differently while training
    layers: list[LayerStats]            # output first, the input last
    steps: list[StepLoss]
    dump: str | None = None
    mode: str = "network"

    def to_dict(self) -> dict[str, Any]:
        d = {"mode": self.mode, "model": self.model, "loss_name": self.loss_name, "loss": self.loss,
             "lr": self.lr, "input_shape": list(self.input_shape), "input": self.input_source,
             "target": self.target, "predicted": self.predicted,
             "layers": [layer.to_dict() for layer in self.layers],
             "steps": [{"step": s.step, "loss": s.loss} for s in self.steps]}
        if self.dump:
            d["dump"] = self.dump
        return d


@dataclass
class TracedObject:
    """An object of a detector's image and the box answering for it (:class:`cnncli.engine.yolo.Responsible`):
    boxes in the input's pixels (x0, y0, x1, y1)."""

    cls: int
    name: str
    cell: tuple[int, int]              # (row, column) of the grid
    box: int                           # which of the cell's boxes answers for it
    truth: tuple[float, float, float, float]
    predicted: tuple[float, float, float, float]
    iou: float
    p: float                           # objectness σ(to)
    c_hat: float                       # its target
    coord: float                       # the object's terms of the loss
    obj: float

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.cls, "name": self.name, "cell": list(self.cell), "box": self.box,
                "truth": list(self.truth), "predicted": list(self.predicted), "iou": self.iou,
                "objectness": self.p, "objectness_target": self.c_hat, "coord": self.coord, "obj": self.obj}


@dataclass
class Located:
    """A localizer's one object and the box and class it predicts (boxes in input pixels x0, y0, x1, y1)."""

    cls: int
    name: str
    truth: tuple[float, float, float, float]
    predicted_cls: int
    predicted_name: str
    probability: float
    predicted: tuple[float, float, float, float]
    iou: float

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.cls, "name": self.name, "truth": list(self.truth), "predicted_class": self.predicted_cls,
                "predicted_name": self.predicted_name, "probability": self.probability,
                "predicted": list(self.predicted), "iou": self.iou}


@dataclass
class DetectionTrace:
    """A detector on one image: the network view (per-layer statistics) and the yolo loss's terms, each object
    with the cell and box responsible for it; ``dropped``: objects whose cell had no box left for them."""

    network: NetworkTrace
    terms: dict[str, float]
    grid: tuple[int, int]
    boxes: int
    objects: list[TracedObject]
    dropped: int
    idle_boxes: int                    # boxes answering for nothing (their loss is the noobj term)
    idle_max_p: float                  # the highest objectness among them
    located: Located | None = None     # a localizer's (its head has no grid)
    mode: str = "detection"

    def to_dict(self) -> dict[str, Any]:
        if self.located is not None:
            return {**self.network.to_dict(), "mode": self.mode, "terms": self.terms,
                    "located": self.located.to_dict()}
        return {**self.network.to_dict(), "mode": self.mode, "terms": self.terms, "grid": list(self.grid),
                "boxes_per_cell": self.boxes, "objects": [o.to_dict() for o in self.objects],
                "dropped": self.dropped, "idle_boxes": self.idle_boxes, "idle_max_objectness": self.idle_max_p}


Trace = WorkedTrace | ConvTrace | PoolTrace | NetworkTrace | DetectionTrace


# ------------------------------------------------------------------------ parsing the options

def parse_values(text: str, flag: str) -> np.ndarray:
    """``"0.1, 0.2,0.7"`` → float64 array; anything else is a UsageError naming the flag and item."""
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(t == "" for t in items):
        raise UsageError(f"{flag} must be comma-separated numbers like 0.1,0.2,0.7, got {text!r} "
                         "(an empty item)")
    values = []
    for n, item in enumerate(items, 1):
        try:
            v = float(item)
        except ValueError:
            raise UsageError(f"{flag}: item {n} ({item!r}) is not a number in {text!r}") from None
        if not math.isfinite(v):
            raise UsageError(f"{flag}: item {n} ({item!r}) is not a finite number")
        values.append(v)
    return np.asarray(values, dtype=np.float64)


def _square(values: np.ndarray, flag: str, what: str, at_least: int = 1) -> np.ndarray:
    n = math.isqrt(values.size)
    if n * n != values.size or n < at_least:
        least = f", at least {at_least}×{at_least}" if at_least > 1 else ""
        raise UsageError(f"{flag} gives {values.size} values; {what} is a square grid, so give "
                         f"n×n values (4, 9, 16, …) row by row{least}")
    return values.reshape(n, n)


def _grid(text: str | None, default: np.ndarray, flag: str, what: str, shape: tuple[int, int] | None = None,
          at_least: int = 1) -> np.ndarray:
    if text is None:
        return default
    values = parse_values(text, flag)
    if shape is None:
        return _square(values, flag, what, at_least)
    if values.size != shape[0] * shape[1]:
        raise UsageError(f"{flag} gives {values.size} values; {what} is {shape[0]}×{shape[1]}, so give "
                         f"{shape[0] * shape[1]} values row by row")
    return values.reshape(shape)


def load_input(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """``--input``: a .npy file or comma-separated values → a batch of one, (1, *shape)."""
    if text.endswith(".npy") or Path(text).is_file():
        path = Path(text)
        # NumPy's messages are not passed on: for a file that is not an array they advise loading it unsafely.
        try:
            with open(path, "rb") as f:
                head = f.read(512)
            if not head.startswith(checkpoint.NPY):
                raise UsageError(f"--input: {path} is not a .npy array file: it is {checkpoint.describe(head)}")
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise UsageError(f"--input: {path} does not exist") from None
        except OSError as e:
            raise UsageError(f"--input: {path} cannot be read: {e.strerror or e}") from None
        except (ValueError, EOFError):
            raise UsageError(f"--input: {path} is not an array of numbers (a damaged .npy file, or Python "
                             "objects)") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise UsageError(f"--input: {path} must hold a numeric array")
        if tuple(arr.shape) not in (tuple(shape), (1,) + tuple(shape)):
            raise UsageError(f"--input: {path} holds an array of shape {fmt_shape(arr.shape)}; "
                             f"the model takes {fmt_shape(shape)} (or 1×{fmt_shape(shape)})")
        arr = arr.astype(np.float64).reshape((1,) + tuple(shape))
        if not np.all(np.isfinite(arr)):
            raise UsageError(f"--input: {path} holds NaN or infinite values")
        return arr
    values = parse_values(text, "--input")
    if values.size != math.prod(shape):
        size = f"{fmt_shape(shape)} = {math.prod(shape)}" if len(shape) > 1 else str(shape[0])
        raise UsageError(f"--input gives {values.size} values; the model takes {size} values "
                         "(or give a .npy file)")
    return values.reshape((1,) + tuple(shape))


def parse_target(text: str, classes: int, loss_name: str) -> np.ndarray:
    """``--target``: a class index K or a comma-separated target vector → a (1, classes) vector."""
    items = [t.strip() for t in str(text).split(",")]
    if len(items) == 1:
        try:
            k = int(items[0])
        except ValueError:
            raise UsageError(f"--target must be a class index 0..{classes - 1} or {classes} comma-separated "
                             f"values, got {text!r}") from None
        if not 0 <= k < classes:
            raise UsageError(f"--target {k} is out of range: the model has {classes} classes (0..{classes - 1})")
        y = np.zeros((1, classes))
        y[0, k] = 1.0
        return y
    values = parse_values(text, "--target")
    if values.size != classes:
        raise UsageError(f"--target gives {values.size} values; the model has {classes} outputs")
    if loss_name in ("bce", "cross_entropy") and (values.min() < 0 or values.max() > 1):
        raise UsageError(f"--target: with the {loss_name} loss every target value must lie in [0, 1], "
                         f"got {text!r}")
    return values.reshape(1, classes)


def _check_lr(lr: float) -> float:
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be a positive number, got {lr!r}")
    return float(lr)


# --------------------------------------------------------------------------- shared machinery

def _jacobian(layer, n: int) -> np.ndarray:
    """∂out_a/∂in_b of an activation layer at its last forward pass: its backward, one unit seed per row."""
    rows = []
    for a in range(n):
        seed = np.zeros((1, n))
        seed[0, a] = 1.0
        rows.append(layer.backward(seed)[0][0])
    return np.array(rows)


def _steps(net: Network, x: np.ndarray, target: np.ndarray, loss, lr: float, steps: int,
           first: Callable[[float], None]) -> list[StepLoss]:
    """Run ``steps`` plain-SGD steps (the slides' w − lr·δw, biases too); ``first`` records step 1.

    Returns the error before each step and after the last one. Passes are
    training passes, as a training step takes them (batch norm on this sample's
    statistics, dropout active).
    """
    sgd = optim.make("sgd", net.trainable(), lr)
    out = []
    for n in range(steps):
        value, _ = net.loss_and_backward(x, target, loss, train=True, keep_node_grads=(n == 0))
        out.append(StepLoss(n, value))
        if n == 0:
            first(value)
        sgd.step(net.grads)
    out.append(StepLoss(steps, _error(net, x, target, loss)))
    return out


def _error(net: Network, x: np.ndarray, target: np.ndarray, loss) -> float:
    """The error at the current weights, defined as :meth:`Network.loss_and_backward` defines it."""
    if net.graph.aux_outputs:
        # Auxiliary heads add weighted losses; let the network sum them rather than repeat its rule.
        return net.loss_and_backward(x, target, loss, train=True)[0]
    net.forward(x, train=True)
    return loss.fn(net.values[loss.source(net.graph)], target)[0]


def write_dump(path: Path, net: Network) -> str:
    """Every parameter gradient (checkpoint keys) and ``act_grad.<node>`` for every node, atomically."""
    arrays = {k: np.asarray(v) for k, v in net.grads.items()}
    arrays.update({f"act_grad.{k}": np.asarray(v) for k, v in net.node_grads.items()})
    if net.input_grad is not None:
        arrays["act_grad.input"] = np.asarray(net.input_grad)
    path = Path(path)
    folder = _dump_folder(path)
    try:
        write_atomic(path, lambda out: np.savez(out, **arrays))
    except OSError as e:
        raise UsageError(f"--dump: cannot write {path} in {folder}: {e}") from None
    return str(path)


def _dump_folder(path: Path) -> Path:
    return atomic.check_file(path, "--dump", example="grads.npz").parent


def _network(model: str, weights: Path | None, skip_model_check: bool = False,
             progress=None) -> tuple[spec.ModelSpec, Network, checkpoint.Checkpoint | None]:
    if weights is not None:
        # Every value kept, in float64, auxiliary heads included: the network as training runs it.
        loaded = trained.load(model, weights, data=None, skip_model_check=skip_model_check, aux=True, fast=False,
                              dtype="float64", progress=progress)
        return loaded.spec, loaded.network, loaded.checkpoint
    model_spec = spec.load(model)
    return model_spec, Network(graph_mod.build(model_spec), dtype="float64", seed=0), None


def _classes(net: Network) -> int:
    shape = net.graph.output_shape
    if len(shape) != 1:
        raise UsageError(f"the model's output is {fmt_shape(shape)}; a loss needs a flat output of classes")
    return shape[0]


def _sample(model_spec: spec.ModelSpec, saved: checkpoint.Checkpoint | None, index: int, data_dir: Path | None,
            shape: tuple[int, ...], progress=None) -> tuple[np.ndarray, int, str]:
    """Test image ``index`` of the dataset the weights were trained on (else the model file's)."""
    from cnncli.data import class_lists

    if saved is not None:
        dataset, data_dir = saved.data_for(model_spec, None, data_dir)
    else:
        dataset = model_spec.train.get("dataset")
    if dataset is None:
        raise UsageError(f"--sample: model '{model_spec.name}' names no dataset (train.dataset), "
                         "so there is no test image to take; give --input instead")
    if class_lists.is_class_list(dataset):
        title = class_lists.get(dataset).title
        raise UsageError(f"--sample {index}: the weights were trained on {title}, of which cnncli has the class "
                         "names but no images, so there is no test image to trace. Give the input itself: "
                         f"--input FILE.npy, an array of {fmt_shape(shape)} numbers as the network takes them "
                         "(resized and normalised as the weights expect), or leave --sample out to trace a random "
                         "input. backprop-trace reads arrays, not image files; a photo's input gradient is what "
                         "`cnncli explain` draws with the same --weights, --image FILE and --method saliency")
    _, plan, x, labels = _test_image(dataset, data_dir, index, shape, model_spec.name, progress)
    adapted = "" if plan.identity else f", {plan.describe()}"
    return x, int(labels[index]), f"{dataset} test image {index} (label {int(labels[index])}{adapted})"


def _test_image(dataset: str, data_dir: Path | None, index: int, shape: tuple[int, ...], model: str, progress):
    """Test image ``index`` of ``dataset`` as the network takes it, as training images reach it (adapted to its
    input, then normalised): (the source, its input plan, x (1, *shape) float64, the split's labels)."""
    from cnncli.data.source import open_source
    from cnncli.records import inputs

    source = open_source(dataset, data_dir, tuple(shape), progress=progress)
    plan = inputs.plan(source.title, source.image_shape, tuple(shape), model)
    images, labels = source.load("test", data_dir, progress=progress)
    if not 0 <= index < len(images):
        raise UsageError(f"--sample {index} is out of range: the {dataset} test set has "
                         f"{count(len(images), 'image')} (0..{len(images) - 1})")
    return source, plan, plan.batch(images[index:index + 1], np.float64, source.normalise), labels


def _detection_sample(model_spec: spec.ModelSpec, saved: checkpoint.Checkpoint | None, index: int | None,
                      data_dir: Path | None, shape: tuple[int, ...], progress=None):
    """Test image ``index`` of a detector's dataset and its boxes in the input's pixels: (x, Boxes, source, names)."""
    if index is None:
        raise UsageError(f"model '{model_spec.name}' is a detector: its loss needs an image's boxes, so trace a test "
                         "image of its dataset with --sample I (--input and --target give no boxes)")
    if saved is not None:
        dataset, data_dir = saved.data_for(model_spec, None, data_dir)
    else:
        dataset = model_spec.train.get("dataset")
    source, plan, x, labels = _test_image(dataset, data_dir, index, shape, model_spec.name, progress)
    boxes = plan.boxes(labels[np.array([index])])
    return x, boxes, f"{source.title} test image {index} ({count(len(boxes.classes), 'object')})", source.classes


def _inputs(model_spec: spec.ModelSpec, net: Network, saved: checkpoint.Checkpoint | None, input: str | None,
            sample: int | None, target: str | None, loss_name: str, data_dir: Path | None,
            progress=None) -> tuple[np.ndarray, np.ndarray, str]:
    """The batch of one and its target vector, from the options or the model's defaults."""
    shape = net.graph.input_shape
    classes = _classes(net)
    if input is not None and sample is not None:
        raise UsageError("give either --input or --sample, not both")
    label = None
    example = EXAMPLES.get(model_spec.name)
    if example is not None and (tuple(shape) != (len(example[0]),) or classes != len(example[1])):
        example = None  # a model file of the same name but another shape
    if sample is not None:
        x, label, source = _sample(model_spec, saved, sample, data_dir, shape, progress)
    elif input is not None:
        x = load_input(input, shape)
        source = f"--input {input}"
    elif example is not None:
        x = np.asarray(example[0], dtype=np.float64).reshape(1, -1)
        source = "the lecture's example input"
    else:
        x = np.random.default_rng(INPUT_SEED).standard_normal((1,) + tuple(shape))
        source = f"random normal input (seed {INPUT_SEED})"
    if target is not None:
        y = parse_target(target, classes, loss_name)
    elif label is not None:
        y = parse_target(str(label), classes, loss_name)
    elif example is not None and input is None:
        y = np.asarray(example[1], dtype=np.float64).reshape(1, -1)
    else:
        y = parse_target("0", classes, loss_name)
    return x, y, source


def _loss_name(loss: str | None, model_spec: spec.ModelSpec) -> str:
    name = loss or model_spec.loss
    try:
        return losses_mod.get(name).name
    except KeyError:
        raise UsageError(f"--loss must be one of ce, bce, mse, got {name!r}") from None


# -------------------------------------------------------------------------------- worked view

def worked_chain(g: graph_mod.Graph) -> list[tuple[graph_mod.Node, graph_mod.Node | None]] | None:
    """The (dense, activation-or-None) pairs of a narrow dense chain, or None for any other network."""
    if len(g.input_shape) != 1 or g.input_shape[0] > WORKED_MAX_WIDTH or g.aux_outputs:
        return None
    pairs: list[tuple[graph_mod.Node, graph_mod.Node | None]] = []
    previous = "input"
    for node in g.nodes:
        if node.inputs != (previous,):
            return None
        if node.kind == "dense":
            if node.out_shape[0] > WORKED_MAX_WIDTH:
                return None
            pairs.append((node, None))
        elif node.kind in WORKED_ACTIVATIONS and pairs and pairs[-1][1] is None:
            pairs[-1] = (pairs[-1][0], node)
        else:
            return None
        previous = node.name
    return pairs or None


def _error_terms(loss, source_value: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The error output by output, each from the engine's loss function, so that Σ terms = E."""
    k = y.shape[1]
    if loss.fuses_softmax:
        # −Σ y·log p only counts output l when the target keeps only y_l.
        return np.array([loss.fn(source_value, y * np.eye(k)[l])[0] for l in range(k)])
    return np.array([loss.fn(source_value[:, [l]], y[:, [l]])[0] for l in range(k)])


def _worked(model_spec: spec.ModelSpec, net: Network, pairs, x: np.ndarray, y: np.ndarray, loss,
            lr: float, steps: int, source: str, dump: Path | None) -> WorkedTrace:
    captured: dict[str, Any] = {}

    def record(value: float) -> None:
        captured["dump"] = _dump_if(dump, net)
        # Copies: the SGD step that follows updates the parameter arrays in place.
        captured["values"] = {k: v.copy() for k, v in net.values.items()}
        captured["node_grads"] = {k: v.copy() for k, v in net.node_grads.items()}
        captured["grads"] = {k: v.copy() for k, v in net.grads.items()}
        captured["params"] = {k: v.copy() for k, v in net.params.items()}
        captured["input_grad"] = net.input_grad.copy()
        captured["jacobians"] = {act.name: _jacobian(net.layers[act.name], act.out_shape[0])
                                 for _, act in pairs if act is not None}
        captured["loss"] = value

    losses_seen = _steps(net, x, y, loss, lr, steps, record)
    values, node_grads, grads = captured["values"], captured["node_grads"], captured["grads"]
    before = captured["params"]
    # δW and Ŵ belong to the first step (--steps N only adds the error of the later ones).
    after = _first_step_params(before, grads, lr)
    out_node = net.graph.output
    src = loss.source(net.graph)
    y_out = values[out_node][0]

    layers = []
    for depth, (dense, act) in enumerate(pairs):
        top = act.name if act is not None else dense.name
        n_out = dense.out_shape[0]
        if top in node_grads:
            grad_out = node_grads[top][0]
        else:
            # The loss fused the final softmax, so no gradient was taken at the probabilities; the
            # unfused cross-entropy gives ∂E/∂Oout for the table (its product with the Jacobian is
            # the fused gradient the engine used, checked in the tests).
            grad_out = losses_mod.cross_entropy(values[top], y)[1][0]
        jac = captured["jacobians"][act.name] if act is not None else np.eye(n_out)
        prev_name = dense.inputs[0]
        grad_x = captured["input_grad"][0] if prev_name == "input" else node_grads[prev_name][0]
        has_bias = f"{dense.name}.bias" in before
        layers.append(WorkedLayer(
            name=dense.name, act_node=act.name if act is not None else None,
            activation=act.kind if act is not None else None,
            rows=INDEX_LETTERS[depth], cols=INDEX_LETTERS[depth + 1],
            x=values[prev_name][0], weight=before[f"{dense.name}.weight"],
            bias=before[f"{dense.name}.bias"] if has_bias else None,
            z=values[dense.name][0], out=values[top][0],
            grad_out=grad_out, jacobian=jac, grad_in=node_grads[dense.name][0], grad_x=grad_x,
            grad_weight=grads.get(f"{dense.name}.weight", np.zeros_like(before[f"{dense.name}.weight"])),
            grad_bias=grads.get(f"{dense.name}.bias") if has_bias else None,
            new_weight=after[f"{dense.name}.weight"],
            new_bias=after[f"{dense.name}.bias"] if has_bias else None,
        ))
    return WorkedTrace(
        model=model_spec.name, loss_name=loss.name, loss=captured["loss"], lr=lr, x=x[0], target=y[0],
        output=y_out, output_kind=net.graph[out_node].kind,
        terms=_error_terms(loss, values[src], y), layers=layers, steps=losses_seen, input_source=source,
        dump=captured["dump"],
    )


def _first_step_params(before: dict[str, np.ndarray], grads: dict[str, np.ndarray],
                       lr: float) -> dict[str, np.ndarray]:
    """The parameters after one plain-SGD step, by the engine's optimizer on copies."""
    params = {k: v.copy() for k, v in before.items()}
    optim.make("sgd", {k: params[k] for k in grads}, lr).step(grads)
    return params


def slide_exact(t: WorkedTrace) -> dict[str, float]:
    """The engine's value of every quantity the lecture prints, keyed as in ``cnncli/slides.yaml``.

    Ids name a layer's values by its node (``h1_in[j]``, ``o_out[l]``); the
    output layer's derivatives carry no name (``dE_dout[l]``, ``dout_din[l]``)
    while the hidden ones do (``dE_dh2out[k]``). Indices are 1-based.
    """
    exact: dict[str, float] = {"E": t.loss}
    for l, (term, o) in enumerate(zip(t.terms, t.output), 1):
        exact[f"E_term[{l}]"] = float(term)
        exact[f"one_minus_o_out[{l}]"] = float(1.0 - o)
    last = len(t.layers) - 1
    for n, layer in enumerate(t.layers):
        d = "" if n == last else layer.name
        pair = layer.rows + layer.cols
        for u in range(layer.z.size):
            exact[f"{layer.name}_in[{u + 1}]"] = float(layer.z[u])
            exact[f"{layer.name}_out[{u + 1}]"] = float(layer.out[u])
            exact[f"dE_d{d}out[{u + 1}]"] = float(layer.grad_out[u])
            exact[f"d{d}out_d{d}in[{u + 1}]"] = float(layer.jacobian[u, u])
        for r, c in np.ndindex(layer.weight.shape):
            exact[f"dW_{pair}[{r + 1},{c + 1}]"] = float(layer.grad_weight[r, c])
            exact[f"W_{pair}_new[{r + 1},{c + 1}]"] = float(layer.new_weight[r, c])
        if n > 0:
            below = t.layers[n - 1].name
            # The slides write ∂E/∂h2out_k as a sum over l; each summand is W_kl·∂E/∂Oin_l.
            for r, c in np.ndindex(layer.weight.shape):
                exact[f"dE_d{below}out_term[{r + 1},{c + 1}]"] = float(layer.weight[r, c] * layer.grad_in[c])
    return exact


def _compare_slides(t: WorkedTrace) -> None:
    from cnncli.lecture import slides

    data = slides.load_slides()
    g = data.given
    lecture = [g.W_ij, g.W_jk, g.W_kl]
    same = (len(t.layers) == len(lecture)
            and all(np.array_equal(layer.weight, w) for layer, w in zip(t.layers, lecture))
            and all(layer.bias is not None and np.array_equal(layer.bias, b)
                    for layer, b in zip(t.layers, (g.b_j, g.b_k, g.b_l)))
            and np.array_equal(t.x, g.x) and np.array_equal(t.target, g.y) and t.lr == g.lr
            and t.loss_name == "bce")
    if not same:
        raise UsageError("--compare-slides checks the lecture's own numbers: use it with slide-mlp, its "
                         f"input, target, weights, the bce loss and lr {g.lr:g} (no --input, --target, "
                         "--weights, --loss or --lr that change them)")
    checks = slides.compare(data, slide_exact(t))
    t.slides = checks
    t.slips = slides.slips(checks)
    t.slide_notes = tuple(data.notes)


# ---------------------------------------------------------------------------- network view

# Layers whose output differs between training and inference passes.
_TRAIN_MODE_KINDS = ("batchnorm", "dropout")


def _network_trace(model_spec: spec.ModelSpec, net: Network, x: np.ndarray, y: np.ndarray, loss,
                   lr: float, steps: int, source: str, target_text: str, dump: Path | None,
                   on_first: Callable[[], Any] | None = None) -> NetworkTrace:
    rows: list[LayerStats] = []
    captured: dict[str, Any] = {}

    def record(value: float) -> None:
        if on_first is not None:
            on_first()
        captured["dump"] = _dump_if(dump, net)
        captured["loss"] = value
        captured["predicted"] = int(np.argmax(net.values[net.graph.output][0]))
        grads = net.grads
        for node in reversed(net.graph.nodes):
            a = net.values.get(node.name)
            if a is None:
                continue
            g = net.node_grads.get(node.name)
            key = f"{node.name}.weight"
            w = net.params.get(key)
            gw = grads.get(key)
            w_norm = float(np.linalg.norm(w)) if w is not None else None
            gw_norm = float(np.linalg.norm(gw)) if gw is not None else None
            rows.append(LayerStats(
                name=node.name, kind=node.kind, shape=tuple(a.shape[1:]), mean=float(a.mean()),
                std=float(a.std()), dead=float(np.mean(a == 0)) if node.kind == "relu" else None,
                grad_norm=float(np.linalg.norm(g)) if g is not None else None,
                weight_norm=w_norm, weight_grad_norm=gw_norm,
                update_ratio=lr * gw_norm / w_norm if gw_norm is not None and w_norm else None,
            ))
        xg = net.input_grad
        rows.append(LayerStats(name="input", kind="input", shape=tuple(x.shape[1:]), mean=float(x.mean()),
                               std=float(x.std()), dead=None,
                               grad_norm=float(np.linalg.norm(xg)) if xg is not None else None,
                               weight_norm=None, weight_grad_norm=None, update_ratio=None))

    losses_seen = _steps(net, x, y, loss, lr, steps, record)
    kinds = sorted({n.kind for n in net.graph.nodes if n.kind in _TRAIN_MODE_KINDS})
    return NetworkTrace(
        model=model_spec.name, loss_name=loss.name, loss=captured["loss"], lr=lr,
        input_shape=tuple(net.graph.input_shape), input_source=source, target=target_text,
        predicted=captured["predicted"], train_mode_layers=kinds, layers=rows, steps=losses_seen,
        dump=captured["dump"],
    )


def _detection_trace(model_spec: spec.ModelSpec, net: Network, saved, sample: int | None, data_dir: Path | None,
                     loss, lr: float, steps: int, dump: Path | None, progress=None) -> DetectionTrace:
    node = net.graph[net.graph.output]
    module = HEADS[node.kind]
    head = module.Head.of(node)
    x, boxes, source, names = _detection_sample(model_spec, saved, sample, data_dir, net.graph.input_shape, progress)
    size = tuple(net.graph.input_shape[1:])
    target, dropped = module.encode(boxes, head, size, np.float64)
    seen: dict[str, np.ndarray] = {}

    # The head's output at the traced (first) pass, before the step changes the weights.
    traced = _network_trace(model_spec, net, x, target, loss, lr, steps, source,
                            count(len(boxes.classes), "box"), dump,
                            on_first=lambda: seen.setdefault("t", net.values[node.name].copy()))
    traced.predicted = None
    t = seen["t"]
    _, _, terms = module.loss(t, target, head)
    if module.ONE_OBJECT:  # a localizer: its one box against the image's one object
        (predicted,), (score,), (cls,) = (a[0] for a in module.decode(t, head, size))
        truth = boxes.xyxy[0].astype(np.float64)
        located = Located(int(boxes.classes[0]), names[int(boxes.classes[0])], tuple(map(float, truth)),
                          int(cls), names[int(cls)], float(score), tuple(map(float, predicted)),
                          float(iou(truth[None], predicted[None])[0, 0]))
        return DetectionTrace(traced, terms.as_dict(), (1, 1), 1, [], 0, 0, 0.0, located=located)
    found = yolo.responsible(t, target, head)
    height, width = size

    def pixels(cxcywh) -> tuple[float, float, float, float]:
        return tuple(float(v) for v in from_yolo(np.array(cxcywh), width, height)[0])  # type: ignore[return-value]

    objects = []
    for f in found:
        truth = pixels(f.truth)
        # The object's class: that of the image's box the slot encodes (the nearest; they are equal to rounding).
        cls = int(boxes.classes[int(np.argmin(np.abs(boxes.xyxy - np.array(truth, np.float32)).max(axis=1)))])
        objects.append(TracedObject(cls, names[cls], (f.row, f.col), f.box, truth, pixels(f.predicted), f.iou, f.p,
                                    f.c_hat, f.coord, f.obj))
    owner, _ = yolo.responsibility(t, target, head)
    p = sigmoid(t[:, :5 * head.boxes].reshape(1, head.boxes, 5, *head.grid)[:, :, 4])
    idle = owner < 0
    return DetectionTrace(traced, terms.as_dict(), head.grid, head.boxes, objects, dropped, int(idle.sum()),
                          float(p[idle].max()) if idle.any() else 0.0)


def _describe_target(y: np.ndarray) -> str:
    row = y[0]
    if np.count_nonzero(row) == 1 and row.max() == 1.0:
        return f"class {int(np.argmax(row))}"
    return "[" + ", ".join(f"{v:g}" for v in row) + "]"


# ------------------------------------------------------------------- conv and pooling views

def sym(name: str, r: int, c: int) -> str:
    """The slides' name of a grid entry, 1-based: X11, F12; X1,10 once an index needs two digits."""
    return f"{name}{r + 1}{c + 1}" if r < 9 and c < 9 else f"{name}{r + 1},{c + 1}"


def _tiny_net(text: str) -> Network:
    return Network(graph_mod.build(spec.parse(text, "<backprop-trace>")), dtype="float64", seed=0)


def _dump_if(dump: Path | None, net: Network) -> str | None:
    return write_dump(dump, net) if dump is not None else None


@dataclass(frozen=True)
class _Defaults:
    """A built-in example's input, its filter or window (only the window's shape counts), and ∂E/∂O."""

    x: np.ndarray
    f: np.ndarray
    upstream: np.ndarray


# Small values that keep every product readable (X counts 1..9; F and ∂E/∂O mix signs).
CONV_DEFAULTS = _Defaults(
    x=np.arange(1.0, 10.0).reshape(3, 3),
    f=np.array([[1.0, 0.0], [-1.0, 2.0]]),
    upstream=np.array([[0.1, -0.2], [0.3, 0.4]]),
)


def run_conv(input: str | None, filter: str | None, upstream: str | None, dump: Path | None) -> ConvTrace:
    """Slides 26–27 on the engine: a conv node with bias off, seeded with ∂E/∂O."""
    x = _grid(input, CONV_DEFAULTS.x, "--input", "the input X", at_least=1)
    f = _grid(filter, CONV_DEFAULTS.f, "--filter", "the filter F", at_least=1)
    if f.shape[0] > x.shape[0]:
        raise UsageError(f"the filter ({f.shape[0]}×{f.shape[1]}) is larger than the input "
                         f"({x.shape[0]}×{x.shape[1]})")
    kh, kw = f.shape
    text = (f"input: [1, {x.shape[0]}, {x.shape[1]}]\nlayers:\n"
            f"  - conv: {{name: conv, filters: 1, kernel: [{kh}, {kw}], bias: false, "
            f"init: {{weight: {f.reshape(1, 1, kh, kw).tolist()}}}}}\n")
    net = _tiny_net(text)
    _, oh, ow = net.graph["conv"].out_shape
    default_up = CONV_DEFAULTS.upstream if (oh, ow) == CONV_DEFAULTS.upstream.shape else \
        np.ones((oh, ow))
    dy = _grid(upstream, default_up, "--upstream", "∂E/∂O", shape=(oh, ow))
    o = net.forward(x[None, None])[0, 0]
    net.backward({"conv": dy[None, None]}, keep_node_grads=True)
    gf = net.grads["conv.weight"][0, 0]
    gx = net.input_grad[0, 0]

    # O_pq = Σ_ab F_ab·X_(p+a)(q+b): the index structure of a valid, stride-1 cross-correlation.
    forward = [WrittenSum(sym("O", p, q), [Product(sym("F", a, b), sym("X", p + a, q + b), f[a, b], x[p + a, q + b])
                                           for a in range(kh) for b in range(kw)], float(o[p, q]))
               for p in range(oh) for q in range(ow)]
    # ∂O_pq/∂F_ab = X_(p+a)(q+b), so ∂E/∂F_ab = Σ_pq ∂E/∂O_pq·X_(p+a)(q+b).
    filter_sums = [WrittenSum(f"∂E/∂{sym('F', a, b)}",
                              [Product(f"∂E/∂{sym('O', p, q)}", sym("X", p + a, q + b), dy[p, q], x[p + a, q + b])
                               for p in range(oh) for q in range(ow)], float(gf[a, b]))
                   for a in range(kh) for b in range(kw)]
    # X_rc feeds O_pq through F_(r−p)(c−q) wherever that tap exists.
    input_sums = [WrittenSum(f"∂E/∂{sym('X', r, c)}",
                             [Product(f"∂E/∂{sym('O', p, q)}", sym("F", r - p, c - q), dy[p, q], f[r - p, c - q])
                              for p in range(oh) for q in range(ow)
                              if 0 <= r - p < kh and 0 <= c - q < kw], float(gx[r, c]))
                  for r in range(x.shape[0]) for c in range(x.shape[1])]
    return ConvTrace(x=x, filter=f, output=o, upstream=dy, grad_filter=gf, grad_input=gx, forward=forward,
                     filter_sums=filter_sums, input_sums=input_sums, dump=_dump_if(dump, net))


# A 4×4 input whose 2×2 windows have their maxima in different corners; ∂E/∂O divisible by 4.
POOL_DEFAULTS = _Defaults(
    x=np.array([[1.0, 3.0, 2.0, 1.0], [4.0, 2.0, 0.0, 5.0], [3.0, 1.0, 1.0, 2.0], [0.0, 6.0, 4.0, 3.0]]),
    f=np.zeros((2, 2)),
    upstream=np.array([[0.4, -0.8], [1.2, 2.0]]),
)


def run_pool(kind: str, input: str | None, upstream: str | None, dump: Path | None) -> PoolTrace:
    """Slide 28 on the engine: a max or average pool node with 2×2 windows, stride 2."""
    kh, kw = POOL_DEFAULTS.f.shape
    x = _grid(input, POOL_DEFAULTS.x, "--input", "the input", at_least=kh)
    layer = f"{kind}pool"
    net = _tiny_net(f"input: [1, {x.shape[0]}, {x.shape[1]}]\nlayers:\n  - {layer}: {{name: pool, kernel: {kh}}}\n")
    _, oh, ow = net.graph["pool"].out_shape
    default_up = POOL_DEFAULTS.upstream if (oh, ow) == POOL_DEFAULTS.upstream.shape else np.ones((oh, ow))
    dy = _grid(upstream, default_up, "--upstream", "∂E/∂O", shape=(oh, ow))
    o = net.forward(x[None, None])[0, 0]
    shares = np.zeros((oh, ow) + x.shape)
    for p, q in np.ndindex(oh, ow):
        seed = np.zeros((1, 1, oh, ow))
        seed[0, 0, p, q] = 1.0
        net.backward({"pool": seed})
        shares[p, q] = net.input_grad[0, 0]
    net.backward({"pool": dy[None, None]}, keep_node_grads=True)
    windows = [[(p * kh + a, q * kw + b) for a in range(kh) for b in range(kw)] for p, q in np.ndindex(oh, ow)]
    return PoolTrace(kind=kind, kernel=(kh, kw), stride=(kh, kw), x=x, output=o, upstream=dy,
                     grad_input=net.input_grad[0, 0].copy(), windows=windows, shares=shares,
                     dump=_dump_if(dump, net))


# ------------------------------------------------------------------------------------- modes

@dataclass(frozen=True)
class Mode:
    """A built-in trace that is not a model file: its function and the options it takes."""

    description: str
    fn: Callable[..., Trace]
    options: tuple[str, ...]


MODES: dict[str, Mode] = {
    "slide-conv": Mode("slides 26–27: a 2×2 filter over a 3×3 input, ∂E/∂F and ∂E/∂X",
                       lambda o: run_conv(o["input"], o["filter"], o["upstream"], o["dump"]),
                       ("input", "filter", "upstream", "dump")),
    "slide-maxpool": Mode("slide 28: 2×2 max pooling, the gradient goes to each window's maximum",
                          lambda o: run_pool("max", o["input"], o["upstream"], o["dump"]),
                          ("input", "upstream", "dump")),
    "slide-avgpool": Mode("slide 28: 2×2 average pooling, the gradient is shared equally",
                          lambda o: run_pool("avg", o["input"], o["upstream"], o["dump"]),
                          ("input", "upstream", "dump")),
}

# Options of models (worked or network view); the flag that sets each, for messages.
_MODEL_OPTIONS = ("loss", "lr", "input", "target", "sample", "weights", "steps", "compare_slides", "dump",
                  "data_dir")
_FLAGS = {"loss": "--loss", "lr": "--lr", "input": "--input", "target": "--target", "sample": "--sample",
          "weights": "--weights", "filter": "--filter", "upstream": "--upstream", "steps": "--steps",
          "compare_slides": "--compare-slides", "dump": "--dump", "data_dir": "--data-dir"}
_UNSET = {"steps": 1, "compare_slides": False}


def _reject(given: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    for key, value in given.items():
        if value != _UNSET.get(key) and value is not None and key not in allowed:
            raise UsageError(f"{_FLAGS[key]} does not apply to {what}")


def run(model: str = "slide-mlp", loss: str | None = None, lr: float | None = None, input: str | None = None,
        target: str | None = None, sample: int | None = None, weights: Path | None = None,
        filter: str | None = None, upstream: str | None = None, steps: int = 1,
        compare_slides: bool = False, dump: Path | None = None, data_dir: Path | None = None,
        progress: Callable[[Any], None] | None = None, skip_model_check: bool = False) -> Trace:
    """Trace ``model``: a built-in mode (:data:`MODES`) or a model file, in the view that fits it.

    ``progress`` receives the download events of ``--sample``'s dataset. ``skip_model_check``: use
    ``weights`` trained for another network (:meth:`~cnncli.records.checkpoint.Checkpoint.check_model`).
    """
    options = dict(loss=loss, lr=lr, input=input, target=target, sample=sample, weights=weights,
                   filter=filter, upstream=upstream, steps=steps, compare_slides=compare_slides,
                   dump=dump, data_dir=data_dir)
    if steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    if dump is not None:
        _dump_folder(Path(dump))  # before a pass that may take a while
    if weights is not None:
        checkpoint.check_readable(weights)
    if model in MODES:
        mode = MODES[model]
        _reject(options, mode.options, f"{model} ({mode.description})")
        return mode.fn(options)
    _reject(options, _MODEL_OPTIONS, f"model '{model}' (--filter and --upstream are for "
                                     f"{', '.join(MODES)})")
    try:
        model_spec, net, saved = _network(model, weights, skip_model_check, progress)
    except UnknownModel as e:
        raise UnknownModel(f"{e}\nbuilt-in traces: {', '.join(MODES)}") from None
    loss_obj = losses_mod.get(_loss_name(loss, model_spec)).bound(net.graph)
    rate = _check_lr(lr if lr is not None else float(model_spec.train_setting("lr")))
    head_kind = net.graph[net.graph.output].kind
    if head_kind in HEADS:
        if loss_obj.name != head_kind:
            raise UsageError(f"model '{model_spec.name}' is a detector: its loss is {head_kind}, not {loss_obj.name}")
        if input is not None or target is not None or compare_slides:
            raise UsageError(f"model '{model_spec.name}' is a detector: trace a test image and its boxes with "
                             "--sample I (--input, --target and --compare-slides are for classifiers)")
        return _detection_trace(model_spec, net, saved, sample, data_dir, loss_obj, rate, steps, dump, progress)
    x, y, source = _inputs(model_spec, net, saved, input, sample, target, loss_obj.name, data_dir, progress)
    pairs = worked_chain(net.graph)
    if pairs is not None:
        trace: Trace = _worked(model_spec, net, pairs, x, y, loss_obj, rate, steps, source, dump)
        if compare_slides:
            _compare_slides(trace)
    else:
        if compare_slides:
            raise UsageError("--compare-slides checks the lecture's worked example: use it with slide-mlp")
        trace = _network_trace(model_spec, net, x, y, loss_obj, rate, steps, source, _describe_target(y), dump)
    return trace
