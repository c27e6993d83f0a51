"""PyTorch export and import: a model as a readable ``nn.Module`` source file, its weights as a state dict.

:func:`module_source` writes one class whose submodules carry cnncli's names,
so its ``state_dict`` keys are cnncli's parameter names (``layer1.0.conv1.weight``;
batch norm adds PyTorch's ``num_batches_tracked``). Names with dots become
nested ``nn.ModuleDict``s. Dense weights are stored in PyTorch's (out, in)
layout, the transpose of cnncli's (in, out). The forward pass is the model
file's graph, one line per layer, auxiliary heads left out; layers without
parameters are ``torch.nn.functional`` calls.

:mod:`cnncli.exchange.pth` reads such a file back without PyTorch (no code of the
file is run) for ``--weights`` (``--checkpoint``); :func:`to_cnncli` maps its names
and layouts to cnncli's.
"""

from __future__ import annotations

import io
import keyword
import re
from collections.abc import Collection
from pathlib import Path

import numpy as np

from cnncli import extras

#: What needs PyTorch, as :func:`require`'s messages say it: training on it, exporting to it.
ENGINE = "training on the torch engine (--engine torch)"
EXPORT = "exporting to PyTorch (--to torch)"


def require(purpose: str = "this"):
    """The torch module, or a UsageError naming ``purpose`` and the extra (:func:`cnncli.extras.require`)."""
    extras.require("torch", purpose)
    import torch as module

    return module


def class_name(model: str) -> str:
    """``resnet20`` → ``Resnet20``, ``lenet5-1998`` → ``Lenet5_1998``: a Python class name."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", model) if p]
    name = "_".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    return name if name[0].isalpha() else "Model_" + name


def _module_ref(name: str) -> str:
    """The expression for the submodule named ``name`` (``self.c1``, ``self.layer1["0"]["conv1"]``)."""
    head, *rest = name.split(".")
    ref = f"self.{head}" if head.isidentifier() and not keyword.iskeyword(head) else f"self._modules[{head!r}]"
    return ref + "".join(f"[{part!r}]" for part in rest)


def _variables(graph) -> dict[str, str]:
    """A Python variable name per node (and ``x`` for the input), unique."""
    out, used = {"input": "x"}, {"x", "self", "torch", "F", "nn"}
    for node in graph.nodes:
        base = re.sub(r"\W", "_", node.name)
        if not base.isidentifier() or keyword.iskeyword(base):
            base = "v_" + base
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        out[node.name] = name
    return out


def _tuple(pair) -> str:
    return f"({pair[0]}, {pair[1]})"


def _constructor(node) -> str | None:
    """The ``nn`` module that holds a node's parameters, as source; None for a layer without them."""
    o, shape_in = node.options, node.in_shapes[0]
    if node.kind == "conv":
        return (f"nn.Conv2d({shape_in[0]}, {o['filters']}, kernel_size={_tuple(o['kernel'])}, "
                f"stride={_tuple(o['stride'])}, padding={_tuple(o['padding'])}, dilation={_tuple(o['dilation'])}, "
                f"groups={o['groups']}, bias={o['bias']})")
    if node.kind == "dense":
        return f"nn.Linear({shape_in[0]}, {o['units']}, bias={o['bias']})"
    if node.kind == "batchnorm":
        kind = "BatchNorm2d" if len(shape_in) == 3 else "BatchNorm1d"
        return f"nn.{kind}({shape_in[0]}, eps={o['eps']!r}, momentum={o['momentum']!r})"
    if node.kind == "subsample":
        return f"Subsample({shape_in[0]}, {_tuple(o['kernel'])}, {_tuple(o['stride'] or o['kernel'])}, " \
               f"{_tuple(o['padding'])})"
    return None


def _call(node, xs: list[str], ref: str) -> str:
    """The forward expression of a node whose inputs are the variables ``xs``."""
    o, x = node.options, (xs[0] if xs else "")
    kind = node.kind
    if kind == "conv":
        if o["connections"] is None:
            return f"{ref}({x})"
        # LeNet-5's connection table: absent (filter, channel) kernels stay zero, in the output and the gradient.
        return (f"F.conv2d({x}, {ref}.weight * {ref}.connections, {ref}.bias, {ref}.stride, {ref}.padding, "
                f"{ref}.dilation, {ref}.groups)")
    if kind in ("dense", "batchnorm", "subsample"):
        return f"{ref}({x})"
    if kind in ("maxpool", "avgpool"):
        args = f"{x}, {_tuple(o['kernel'])}, {_tuple(o['stride'] or o['kernel'])}, {_tuple(o['padding'])}, " \
               f"ceil_mode={o['ceil_mode']}"
        if kind == "maxpool":
            return f"F.max_pool2d({args})"
        return f"F.avg_pool2d({args}, count_include_pad={o['count_include_pad']})"
    if kind == "shortcut_pad":
        (sh, sw), extra = o["stride"], o["channels"] - node.in_shapes[0][0]
        return f"F.pad({x}[:, :, ::{sh}, ::{sw}], (0, 0, 0, 0, 0, {extra}))  # option A: subsample, zero channels"
    simple = {
        "adaptive_avgpool": lambda: f"F.adaptive_avg_pool2d({x}, {_tuple(o['output'])})",
        "global_avgpool": lambda: f"{x}.mean((2, 3))",
        "flatten": lambda: f"torch.flatten({x}, 1)",
        "relu": lambda: f"F.relu({x})",
        "leaky_relu": lambda: f"F.leaky_relu({x}, {o['slope']!r})",
        "sigmoid": lambda: f"torch.sigmoid({x})",
        "tanh": lambda: f"torch.tanh({x})",
        "softmax": lambda: f"torch.softmax({x}, 1)",
        "dropout": lambda: f"F.dropout({x}, {o['rate']!r}, self.training)",
        "yolo": lambda: f"{x}  # the raw yolo head: decoding and non-maximum suppression follow the module",
        "localize": lambda: f"{x}  # class scores, then the box's raw numbers (sigmoid: its centre and size)",
        "lrn": lambda: f"F.local_response_norm({x}, {o['size']}, {o['alpha']!r}, {o['beta']!r}, {o['k']!r})",
        "add": lambda: " + ".join(xs),
        "concat": lambda: f"torch.cat([{', '.join(xs)}], 1)",
    }
    return simple[kind]()


#: Layer kinds the translation covers (a test checks it is every kind).
KINDS_COVERED = ("conv", "dense", "batchnorm", "subsample", "maxpool", "avgpool", "shortcut_pad", "adaptive_avgpool",
                 "global_avgpool", "flatten", "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "dropout", "lrn",
                 "add", "concat", "yolo", "localize")

_SUBSAMPLE = '''

class Subsample(nn.Module):
    """LeNet-5 (1998): each window's sum times a trainable per-channel weight, plus a per-channel bias."""

    def __init__(self, channels, kernel, stride, padding):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))

    def forward(self, x):
        area = self.kernel[0] * self.kernel[1]
        pooled = F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True) * area
        return pooled * self.weight[None, :, None, None] + self.bias[None, :, None, None]
'''


def module_source(graph, model: str, source: str, weights_file: str, returns: tuple[str, ...] | None = None) -> str:
    """The Python source of one ``nn.Module`` class computing ``graph`` (built without auxiliary heads).

    ``returns``: node names whose values ``forward`` returns, as a tuple (default: the graph's output alone).
    """
    cls = class_name(model)
    lines = [
        f'"""{model} as a PyTorch module, written by `cnncli export` from {source}.',
        "",
        "Usage (inputs float32 (N, " + ", ".join(map(str, graph.input_shape)) + "), prepared as the run's "
        "config.yaml says):",
        f"    model = {cls}()",
        f"    model.load_state_dict(torch.load({weights_file!r}, weights_only=True))",
        "    outputs = model.eval()(x)",
        '"""',
        "",
        "import torch",
        "import torch.nn.functional as F",
        "from torch import nn",
    ]
    if any(n.kind == "subsample" for n in graph.nodes):
        lines += _SUBSAMPLE.splitlines()
    lines += ["", "", f"class {cls}(nn.Module):", "    def __init__(self):", "        super().__init__()"]
    containers: set[str] = set()
    for node in graph.nodes:
        made = _constructor(node)
        if made is None:
            continue
        parts = node.name.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if prefix not in containers:
                containers.add(prefix)
                lines.append(f"        {_assign_target(prefix)} = nn.ModuleDict()")
        lines.append(f"        {_assign_target(node.name)} = {made}")
        if not node.trainable:
            lines.append(f"        {_module_ref(node.name)}.requires_grad_(False)  # trainable: false")
        if node.kind == "conv" and node.options["connections"] is not None:
            table = np.asarray(node.options["connections"]).tolist()
            lines.append(f"        {_module_ref(node.name)}.register_buffer(\"connections\", "
                         f"torch.tensor({table}, dtype=torch.float32)[:, :, None, None], persistent=False)")
    names = _variables(graph)
    lines += ["", "    def forward(self, x):"]
    for node in graph.nodes:
        expr = _call(node, [names[i] for i in node.inputs], _module_ref(node.name))
        lines.append(f"        {names[node.name]} = {expr}")
    if returns is None:
        lines.append(f"        return {names[graph.output]}")
    else:
        lines.append(f"        return ({''.join(names[r] + ', ' for r in returns)})")
    return "\n".join(lines) + "\n"


def _assign_target(name: str) -> str:
    head, *rest = name.split(".")
    if not rest:
        if head.isidentifier() and not keyword.iskeyword(head):
            return f"self.{head}"
        return f"self._modules[{head!r}]"  # add_module's effect, for names Python cannot spell
    return _module_ref(".".join([head, *rest[:-1]])) + f"[{rest[-1]!r}]"


def transposed(graph) -> set[str]:
    """The parameter keys whose PyTorch layout is the transpose of cnncli's: dense weights, (in, out) here,
    (out, in) in ``nn.Linear``. Export, import and the torch engine all ask here."""
    return {f"{n.name}.weight" for n in graph.nodes if n.kind == "dense"}


#: The side of the square tiles :func:`transpose` copies in (256 × 256 float32: 256 KiB, in a core's L2 cache).
_TILE = 256


def transpose(value: np.ndarray) -> np.ndarray:
    """A 2-D array's transpose as a new C-contiguous array, copied in square tiles. numpy's copy of a whole
    transposed matrix reads or writes one of them a column at a time, out of the cache: for VGG-16's
    25,088 × 4,096 fc6 that took 1.5-2 s of every load and export, the tiles 0.3 s."""
    rows, cols = value.shape
    out = np.empty((cols, rows), value.dtype)
    for i in range(0, rows, _TILE):
        for j in range(0, cols, _TILE):
            out[j:j + _TILE, i:i + _TILE] = value[i:i + _TILE, j:j + _TILE].T
    return out


def state_dict(graph, params: dict[str, np.ndarray], buffers: dict[str, np.ndarray], dtype: str = "float32") -> dict:
    """cnncli's weights as the exported module's state dict (torch tensors; dense weights transposed)."""
    t = require()
    flipped = transposed(graph)
    out = {}
    for node in graph.nodes:
        for suffix in node.params:
            value = np.asarray(params[f"{node.name}.{suffix}"], dtype=dtype)
            if f"{node.name}.{suffix}" in flipped:
                value = transpose(value)
            out[f"{node.name}.{suffix}"] = t.from_numpy(np.ascontiguousarray(value))
        for suffix in node.buffers:
            out[f"{node.name}.{suffix}"] = t.from_numpy(np.asarray(buffers[f"{node.name}.{suffix}"], dtype=dtype).copy())
        if node.kind == "batchnorm":
            out[f"{node.name}.num_batches_tracked"] = t.tensor(0, dtype=t.long)
    return out


def save_state_dict(state: dict, path: Path) -> bytes:
    """The bytes of ``torch.save(state)`` (the caller writes them atomically)."""
    buf = io.BytesIO()
    require(EXPORT).save(state, buf)
    return buf.getvalue()


def to_cnncli(state: dict[str, np.ndarray], graph, only: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """A state dict with the exported module's names → cnncli's weights: dense weights transposed back,
    ``num_batches_tracked`` dropped, a ``module.`` prefix (DataParallel's) removed; ``only``: just these
    keys (cnncli's names), the others not copied."""
    dense = transposed(graph)
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.endswith(".num_batches_tracked") or (only is not None and key not in only):
            continue
        out[key] = transpose(value) if key in dense and value.ndim == 2 else value
    return out
