"""The static description of every layer kind: its options and one pure shape function.

A :class:`Kind` says which options a layer takes, what shape it produces from
the shapes it receives, which parameters (and buffers) it owns and how many
multiply-accumulates it costs. The model loader validates against it, the
engine allocates from it and ``summarize`` reports it, so the three can never
disagree. Nothing here allocates an array or imports Numba.

Shapes are per sample, without the batch axis: ``(C, H, W)`` for images,
``(F,)`` for flat features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

Shape = tuple[int, ...]


class ShapeProblem(Exception):
    """Raised by a shape function; the graph adds which layer and file it was."""


_REQUIRED = object()


@dataclass(frozen=True)
class Option:
    """One keyword option of a layer kind.

    ``type`` is one of ``int``, ``float``, ``bool``, ``pair`` (an int or two
    ints ``[h, w]``), ``choice`` (one of ``choices``), ``table`` (a 0/1 matrix),
    ``sizes`` (a list of ``[w, h]`` pairs of positive numbers) or ``any``. ``check`` returns a rule the value breaks, or ``None``.
    """

    type: str
    default: Any = _REQUIRED
    doc: str = ""
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def _positive(v: Any) -> str | None:
    values = v if isinstance(v, tuple) else (v,)
    return None if all(x > 0 for x in values) else "must be positive"


def _non_negative(v: Any) -> str | None:
    values = v if isinstance(v, tuple) else (v,)
    return None if all(x >= 0 for x in values) else "must not be negative"


def _unit_interval(v: Any) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


@dataclass(frozen=True)
class Kind:
    """A layer kind: options, arity and the pure functions of its shapes.

    ``shape(opts, in_shapes) -> out_shape`` raises :class:`ShapeProblem`.
    ``params(opts, in_shapes) -> {suffix: shape}`` names learnable arrays
    (``weight``, ``bias``); ``buffers`` names state that is saved but not
    learned (batch-norm running statistics). ``macs`` counts the
    multiply-accumulates of one sample, for convolution and dense layers only
    (what torchvision's "GFLOPS" column counts).
    """

    name: str
    doc: str
    shape: Callable[[dict, list[Shape]], Shape]
    options: dict[str, Option] = field(default_factory=dict)
    min_inputs: int = 1
    max_inputs: int = 1
    params: Callable[[dict, list[Shape]], dict[str, Shape]] = lambda o, s: {}
    buffers: Callable[[dict, list[Shape]], dict[str, Shape]] = lambda o, s: {}
    macs: Callable[[dict, list[Shape], Shape], int] = lambda o, s, out: 0
    #: The classes an output of this kind scores: a flat output's units; a detection head's class channels.
    classes: Callable[[dict, Shape], int | None] = lambda o, out: out[0] if len(out) == 1 else None
    #: A detection head's numbers that are not class scores (its boxes'), which come before them: the layer
    #: before it has this many outputs more than classes (cnncli.model.head sizes it so). 0 for other kinds.
    reserved: Callable[[dict], int] = lambda o: 0


def fmt_shape(shape: Shape) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"


def _image(in_shape: Shape, kind: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ShapeProblem(
            f"{kind} needs an image input (C×H×W), got {fmt_shape(in_shape)}"
        )
    return in_shape  # type: ignore[return-value]


def window_output(size: int, kernel: int, stride: int, padding: int,
                  dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a sliding window along one axis, by PyTorch's rule; 0 when no window fits.

    ``ceil_mode`` rounds up, then drops a last window that would start beyond
    the input and its left padding (PyTorch's correction); it may admit a
    window longer than the padded input. The engine's kernels, the shape
    inference and ``summarize`` all take their sizes from here.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        # PyTorch: the last window must start inside the input or left padding.
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return max(out, 0)


# --- convolution ---------------------------------------------------------------

def _conv_shape(o: dict, s: list[Shape]) -> Shape:
    c, h, w = _image(s[0], "conv")
    groups = o["groups"]
    if c % groups:
        raise ShapeProblem(f"groups (={groups}) does not divide its input channels (={c})")
    if o["filters"] % groups:
        raise ShapeProblem(f"groups (={groups}) does not divide filters (={o['filters']})")
    if o["connections"] is not None:
        table = o["connections"]
        if groups != 1:
            raise ShapeProblem("connections cannot be combined with groups")
        if len(table) != o["filters"] or any(len(row) != c for row in table):
            raise ShapeProblem(
                f"connections must be a {o['filters']}×{c} table (filters × input channels), "
                f"got {len(table)}×{len(table[0]) if table else 0}"
            )
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = o["kernel"], o["stride"], o["padding"], o["dilation"]
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if eh > h + 2 * ph or ew > w + 2 * pw:
        padded = f" padded to {h + 2 * ph}×{w + 2 * pw}" if ph or pw else ""
        raise ShapeProblem(
            f"kernel (={kh}×{kw}{', dilated to ' + str(eh) + '×' + str(ew) if (eh, ew) != (kh, kw) else ''}) "
            f"is larger than its input ({h}×{w}{padded})"
        )
    return (o["filters"], window_output(h, kh, sh, ph, dh), window_output(w, kw, sw, pw, dw))


def _conv_params(o: dict, s: list[Shape]) -> dict[str, Shape]:
    c = s[0][0]
    kh, kw = o["kernel"]
    p = {"weight": (o["filters"], c // o["groups"], kh, kw)}
    if o["bias"]:
        p["bias"] = (o["filters"],)
    return p


def conv_connections(o: dict) -> int | None:
    """Number of (filter, input channel) pairs a sparse connection table keeps."""
    table = o.get("connections")
    return None if table is None else sum(sum(1 for v in row if v) for row in table)


def _conv_macs(o: dict, s: list[Shape], out: Shape) -> int:
    kh, kw = o["kernel"]
    pairs = conv_connections(o)
    if pairs is None:
        pairs = o["filters"] * (s[0][0] // o["groups"])
    return out[1] * out[2] * pairs * kh * kw


# --- pooling -------------------------------------------------------------------

def pool_padding_problem(kernel: tuple[int, int], padding: tuple[int, int]) -> str | None:
    """PyTorch's pooling rule: padding at most half the kernel, so every window sees a real cell.

    Returns the rule a pooling layer's ``kernel`` and ``padding`` (``(h, w)`` each) break, or ``None``.
    """
    (kh, kw), (ph, pw) = kernel, padding
    if 2 * ph > kh or 2 * pw > kw:
        return f"padding (={ph}×{pw}) must be at most half the kernel ({kh}×{kw})"
    return None


def _pool_shape(kind: str) -> Callable[[dict, list[Shape]], Shape]:
    def shape(o: dict, s: list[Shape]) -> Shape:
        c, h, w = _image(s[0], kind)
        (kh, kw), (ph, pw) = o["kernel"], o["padding"]
        stride = o["stride"] or o["kernel"]
        problem = pool_padding_problem(o["kernel"], o["padding"])
        if problem:
            raise ShapeProblem(problem)
        if kh > h + 2 * ph or kw > w + 2 * pw:
            raise ShapeProblem(f"kernel (={kh}×{kw}) is larger than its input ({h}×{w})")
        ceil = o.get("ceil_mode", False)
        return (c, window_output(h, kh, stride[0], ph, 1, ceil), window_output(w, kw, stride[1], pw, 1, ceil))

    return shape


def _adaptive_shape(o: dict, s: list[Shape]) -> Shape:
    c, h, w = _image(s[0], "adaptive_avgpool")
    oh, ow = o["output"]
    if oh > h * 8 or ow > w * 8:
        raise ShapeProblem(f"output (={oh}×{ow}) is far larger than its input ({h}×{w})")
    return (c, oh, ow)


def _global_pool_shape(o: dict, s: list[Shape]) -> Shape:
    return (_image(s[0], "global_avgpool")[0],)


# He et al.'s option-A shortcut (section 3.3, used for their CIFAR-10 networks, section 4.2):
# an identity where the shape is kept; where a stage halves the size and widens the channels,
# x[:, :, ::s, ::s] with zero channels added. The zeros go after the input's channels, as in
# fb.resnet.torch (Gross & Wilber's reproduction: Concat(Identity, MulConstant(0))): channel c of
# the input stays channel c, so the shortcut is an identity onto the first channels. Some PyTorch
# ports put half the zeros before and half after; that is the same network with the channels of
# the stage in another order (filters are initialised alike, so even the start is the same in law).
def _shortcut_pad_shape(o: dict, s: list[Shape]) -> Shape:
    c, h, w = _image(s[0], "shortcut_pad")
    if o["channels"] < c:
        raise ShapeProblem(
            f"channels (={o['channels']}) must be at least its input channels (={c}): "
            f"the shortcut adds zero channels, it never drops any"
        )
    sh, sw = o["stride"]
    # x[:, :, ::s, ::s]: every s-th row and column from the first, ⌈h/s⌉ of them.
    return (o["channels"], window_output(h, 1, sh, 0), window_output(w, 1, sw, 0))


def _subsample_params(o: dict, s: list[Shape]) -> dict[str, Shape]:
    return {"weight": (s[0][0],), "bias": (s[0][0],)}


# --- dense and the rest ----------------------------------------------------------

def _dense_shape(o: dict, s: list[Shape]) -> Shape:
    if len(s[0]) != 1:
        raise ShapeProblem(
            f"dense needs a flat input (features), got {fmt_shape(s[0])}; add a flatten layer before it"
        )
    return (o["units"],)


def _dense_params(o: dict, s: list[Shape]) -> dict[str, Shape]:
    p = {"weight": (s[0][0], o["units"])}  # (in, out): x·W + b as on the slides
    if o["bias"]:
        p["bias"] = (o["units"],)
    return p


def _same(o: dict, s: list[Shape]) -> Shape:
    return s[0]


def _flatten(o: dict, s: list[Shape]) -> Shape:
    return (math.prod(s[0]),)


def _yolo_shape(o: dict, s: list[Shape]) -> Shape:
    c, _, _ = _image(s[0], "yolo")
    if c - _yolo_reserved(o) < 1:
        raise ShapeProblem(f"a yolo head of {o['boxes']} boxes reads 5 numbers a box (x, y, w, h, objectness) and "
                           f"then one score a class, so at least {5 * o['boxes'] + 1} channels, got {c}")
    if o["anchors"] is not None and len(o["anchors"]) != o["boxes"]:
        raise ShapeProblem(f"anchors lists {len(o['anchors'])} sizes for {o['boxes']} boxes: give one [w, h] a box")
    return s[0]


def _yolo_reserved(o: dict) -> int:
    """Five numbers a box (x, y, w, h, objectness) before a yolo head's class scores."""
    return 5 * o["boxes"]


def _localize_reserved(o: dict) -> int:
    """The box's four numbers after a localize head's class scores."""
    return 4


def _less(reserved: Callable[[dict], int]) -> Callable[[dict, Shape], int]:
    """A detection head's classes: its channels (or features) less its ``reserved`` numbers."""
    return lambda o, out: out[0] - reserved(o)


def _localize_shape(o: dict, s: list[Shape]) -> Shape:
    if len(s[0]) != 1 or s[0][0] < _localize_reserved(o) + 1:
        raise ShapeProblem(f"a localize head reads one score a class, then 4 numbers of the box, from a flat input "
                           f"of at least 5 features, got {fmt_shape(s[0])}")
    return s[0]


def _channels(o: dict, s: list[Shape]) -> dict[str, Shape]:
    return {"weight": (s[0][0],), "bias": (s[0][0],)}


def _bn_buffers(o: dict, s: list[Shape]) -> dict[str, Shape]:
    return {"running_mean": (s[0][0],), "running_var": (s[0][0],)}


def _lrn_shape(o: dict, s: list[Shape]) -> Shape:
    _image(s[0], "lrn")
    return s[0]


def _add_shape(o: dict, s: list[Shape]) -> Shape:
    if any(x != s[0] for x in s[1:]):
        raise ShapeProblem("inputs have different shapes")
    return s[0]


def _concat_shape(o: dict, s: list[Shape]) -> Shape:
    if any(len(x) != len(s[0]) or x[1:] != s[0][1:] for x in s[1:]):
        raise ShapeProblem("inputs differ in more than their channels")
    return (sum(x[0] for x in s),) + tuple(s[0][1:])


_PAIR1 = Option("pair", 1, check=_positive)
_PAD = Option("pair", 0, "zero padding on each side", check=_non_negative)
_KERNEL = Option("pair", doc="window size, an int or [h, w]", check=_positive)
_BIAS = Option("bool", True, "learn a bias")
_TRAINABLE = Option("bool", True, "false keeps the parameters fixed")

_POOL_OPTIONS = {
    "kernel": _KERNEL,
    "stride": Option("pair", None, "defaults to the kernel", check=_positive),
    "padding": _PAD,
    "ceil_mode": Option("bool", False, "round the output size up, as PyTorch's ceil_mode"),
}

KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("conv", "2-D convolution (PyTorch's Conv2d)", _conv_shape, {
            "filters": Option("int", doc="output channels", check=_positive),
            "kernel": _KERNEL,
            "stride": _PAIR1,
            "padding": _PAD,
            "dilation": _PAIR1,
            "groups": Option("int", 1, check=_positive),
            "bias": _BIAS,
            "connections": Option("table", None, "filters × input-channel 0/1 table (LeNet-5 C3)"),
            "trainable": _TRAINABLE,
        }, params=_conv_params, macs=_conv_macs),
        Kind("maxpool", "max pooling", _pool_shape("maxpool"), dict(_POOL_OPTIONS)),
        Kind("avgpool", "average pooling", _pool_shape("avgpool"), {
            **_POOL_OPTIONS,
            "count_include_pad": Option("bool", True, "divide by the whole window, padding included"),
        }),
        Kind("adaptive_avgpool", "average pooling to a fixed output size", _adaptive_shape, {
            "output": Option("pair", doc="output size, an int or [h, w]", check=_positive),
        }),
        Kind("global_avgpool", "mean over each channel's plane, C×H×W → C", _global_pool_shape),
        Kind("subsample", "LeNet-5 (1998) subsampling: window sum × learned coefficient + bias, per channel",
             _pool_shape("subsample"), {
                 "kernel": _KERNEL,
                 "stride": Option("pair", None, "defaults to the kernel", check=_positive),
                 "padding": _PAD,
                 "trainable": _TRAINABLE,
             }, params=_subsample_params),
        Kind("shortcut_pad",
             "option-A shortcut of He et al. 2016, no parameters: x[:, :, ::stride, ::stride], then "
             "zero channels after the input's own up to `channels` (as fb.resnet.torch; why: see "
             "_shortcut_pad_shape)",
             _shortcut_pad_shape, {
                 "stride": Option("pair", 1, "keep every stride-th row and column, an int or [h, w]",
                                  check=_positive),
                 "channels": Option("int", doc="output channels (at least the input's)", check=_positive),
             }),
        Kind("dense", "fully connected: x·W + b, W laid out (in, out)", _dense_shape, {
            "units": Option("int", doc="output features", check=_positive),
            "bias": _BIAS,
            "trainable": _TRAINABLE,
        }, params=_dense_params, macs=lambda o, s, out: s[0][0] * o["units"]),
        Kind("flatten", "C×H×W → C·H·W", _flatten),
        Kind("relu", "max(0, x)", _same),
        Kind("leaky_relu", "x if x > 0 else slope·x", _same, {
            "slope": Option("float", 0.01, check=_non_negative),
        }),
        Kind("sigmoid", "1 / (1 + e^-x)", _same),
        Kind("tanh", "hyperbolic tangent", _same),
        Kind("softmax", "e^x_i / Σ e^x_a over the channel axis", _same),
        Kind("batchnorm", "batch normalization over the channel axis", _same, {
            "eps": Option("float", 1e-5, check=_positive),
            "momentum": Option("float", 0.1, "weight of the new batch in the running statistics",
                               check=_unit_interval),
            "trainable": _TRAINABLE,
        }, params=_channels, buffers=_bn_buffers),
        Kind("dropout", "zero a fraction of activations while training", _same, {
            "rate": Option("float", 0.5, check=_unit_interval),
        }),
        Kind("lrn", "local response normalization across channels (PyTorch's: alpha is divided by size)",
             _lrn_shape, {
                 "size": Option("int", 5, check=_positive),
                 "alpha": Option("float", 1e-4, check=_non_negative),
                 "beta": Option("float", 0.75, check=_non_negative),
                 "k": Option("float", 1.0, check=_positive),
             }),
        Kind("add", "elementwise sum of its inputs (residual connections)", _add_shape,
             min_inputs=2, max_inputs=64),
        Kind("concat", "join its inputs along the channel axis (inception)", _concat_shape,
             min_inputs=2, max_inputs=64),
        Kind("yolo",
             "detection head of Redmon et al. 2016 (You Only Look Once): reads, per cell of the grid, `boxes` × "
             "(x, y, w, h, objectness) and one score a class; passes its input on as it is (the raw head) and "
             "gives the yolo loss its settings (cnncli.engine.yolo)",
             _yolo_shape, {
                 "boxes": Option("int", 2, "boxes each cell predicts", check=_positive),
                 "anchors": Option("sizes", None, "a [w, h] prior a box, in grid cells (YOLOv2's anchors); "
                                   "none: the paper's boxes, sized by √w, √h"),
                 "coord": Option("float", 5.0, "weight of the box coordinates' loss (the paper's λcoord)",
                                 check=_non_negative),
                 "obj": Option("float", 1.0, "weight of the objectness loss of responsible boxes",
                               check=_non_negative),
                 "noobj": Option("float", 0.5, "weight of the objectness loss of the other boxes (λnoobj)",
                                 check=_non_negative),
                 "cls": Option("float", 1.0, "weight of the class loss of cells holding an object",
                               check=_non_negative),
                 "rescore": Option("bool", True, "objectness target of a responsible box: its IoU with the object "
                                   "(the paper), or 1"),
             }, classes=_less(_yolo_reserved), reserved=_yolo_reserved),
        Kind("localize",
             "single-object localization head: reads one score a class, then the box (x, y, w, h); passes its input "
             "on as it is and gives the localize loss its settings (cnncli.engine.localize)",
             _localize_shape, {
                 "box": Option("float", 5.0, "weight of the box's squared error", check=_non_negative),
                 "cls": Option("float", 1.0, "weight of the class scores' cross-entropy", check=_non_negative),
             }, classes=_less(_localize_reserved), reserved=_localize_reserved),
    ]
}

#: Options every layer takes besides its kind's own.
COMMON_OPTIONS = ("name", "input", "inputs", "aux", "init")


def is_parametric(kind: str) -> bool:
    return "trainable" in KINDS[kind].options


def passes_through(kind: str) -> bool:
    """Whether a layer of ``kind`` learns nothing and gives back its one input's shape (an activation, softmax,
    dropout): such layers may follow a classifier's head without changing what its units are."""
    k = KINDS[kind]
    return k.shape is _same and k.max_inputs == 1 and not is_parametric(kind)
