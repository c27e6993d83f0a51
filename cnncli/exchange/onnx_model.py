"""ONNX export: a model's inference network as an ONNX graph, written with the ``onnx`` package.

The graph computes what ``cnncli eval`` computes, float32, batch norm with its
running statistics, dropout as identity, auxiliary heads left out:

* input ``input``: float32 (batch, C, H, W), the model's input size, the batch
  dimension free (``batch``); images prepared as training prepared them (the
  run's adaptation and normalisation are in its ``config.yaml``);
* output ``output``: float32 (batch, classes), the model's output node —
  logits for a ``cross_entropy`` model (softmax is in the loss, as in PyTorch).

Tensors are named like cnncli's nodes (``layer1.0.conv1``) and initializers
like its parameters (``layer1.0.conv1.weight``), so the graph reads like the
model file. One translation per layer kind (:data:`EMIT`); dense weights keep
cnncli's (in, out) layout as ``Gemm``'s B. Opset :data:`OPSET`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnncli import extras

OPSET = 17
INPUT, OUTPUT = "input", "output"


def require():
    """The onnx package, or a UsageError naming the extra (:func:`cnncli.extras.require`)."""
    extras.require("onnx", "exporting to ONNX (--to onnx)")
    import onnx

    return onnx


@dataclass
class _Builder:
    """The graph under construction: nodes, initializers, and names made unique."""

    onnx: Any
    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def constant(self, name: str, value: np.ndarray) -> str:
        name = self.unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def param(self, node, suffix: str) -> str:
        return self.constant(f"{node.name}.{suffix}", np.asarray(self.params[f"{node.name}.{suffix}"], np.float32))

    def buffer(self, node, suffix: str) -> str:
        return self.constant(f"{node.name}.{suffix}", np.asarray(self.buffers[f"{node.name}.{suffix}"], np.float32))

    def unique(self, name: str) -> str:
        base, n = name, 1
        while name in self.used:
            n += 1
            name = f"{base}:{n}"
        self.used.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=self.unique(name), **attrs))
        return output


def _pads(padding) -> list[int]:
    (ph, pw) = padding
    return [ph, pw, ph, pw]


def _conv(b: _Builder, node, xs, out):
    o = node.options
    w = np.asarray(b.params[f"{node.name}.weight"], np.float32)
    if o["connections"] is not None:
        # LeNet-5's connection table: absent (filter, channel) kernels are zero, as the engine masks them.
        w = w * np.asarray(o["connections"], np.float32)[:, :, None, None]
    inputs = [xs[0], b.constant(f"{node.name}.weight", w)] + ([b.param(node, "bias")] if o["bias"] else [])
    return b.op("Conv", inputs, out, node.name, kernel_shape=list(o["kernel"]), strides=list(o["stride"]),
                pads=_pads(o["padding"]), dilations=list(o["dilation"]), group=o["groups"])


def _pool_args(o) -> dict[str, Any]:
    return {"kernel_shape": list(o["kernel"]), "strides": list(o["stride"] or o["kernel"]),
            "pads": _pads(o["padding"]), "ceil_mode": int(o["ceil_mode"])}


def _maxpool(b, node, xs, out):
    return b.op("MaxPool", xs, out, node.name, **_pool_args(node.options))


def _avgpool(b, node, xs, out):
    return b.op("AveragePool", xs, out, node.name, count_include_pad=int(node.options["count_include_pad"]),
                **_pool_args(node.options))


def _averaging(size: int, n_out: int) -> np.ndarray:
    """(n_out, size): row i averages input floor(i·size/n) .. ceil((i+1)·size/n) − 1 (PyTorch's adaptive windows)."""
    a = np.zeros((n_out, size), np.float32)
    for i in range(n_out):
        lo, hi = (i * size) // n_out, -(-((i + 1) * size) // n_out)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


def _adaptive_avgpool(b, node, xs, out):
    # An adaptive average is separable: rows averaged, then columns — two MatMuls with averaging matrices.
    (_, h, w), (oh, ow) = node.in_shapes[0], node.options["output"]
    rows = b.op("MatMul", [b.constant(f"{node.name}.rows", _averaging(h, oh)), xs[0]], b.unique(f"{node.name}/rows"),
                f"{node.name}/rows")
    return b.op("MatMul", [rows, b.constant(f"{node.name}.columns", _averaging(w, ow).T.copy())], out, node.name)


def _global_avgpool(b, node, xs, out):
    pooled = b.op("GlobalAveragePool", xs, b.unique(f"{node.name}/pooled"), f"{node.name}/pooled")
    return b.op("Flatten", [pooled], out, node.name, axis=1)


def _subsample(b, node, xs, out):
    # LeNet-5 (1998): the window's sum times a trainable per-channel weight, plus a per-channel bias.
    o = node.options
    k = o["kernel"]
    channels = node.in_shapes[0][0]
    scale = np.asarray(b.params[f"{node.name}.weight"], np.float32) * (k[0] * k[1])
    avg = b.op("AveragePool", xs, b.unique(f"{node.name}/average"), f"{node.name}/average",
               count_include_pad=1, **_pool_args({**o, "ceil_mode": False}))
    scaled = b.op("Mul", [avg, b.constant(f"{node.name}.weight", scale.reshape(1, channels, 1, 1))],
                  b.unique(f"{node.name}/scaled"), f"{node.name}/scaled")
    bias = np.asarray(b.params[f"{node.name}.bias"], np.float32).reshape(1, channels, 1, 1)
    return b.op("Add", [scaled, b.constant(f"{node.name}.bias", bias)], out, node.name)


def _shortcut_pad(b, node, xs, out):
    # He et al.'s option A: x[:, :, ::sh, ::sw], then zero channels appended up to `channels`.
    (sh, sw), extra = node.options["stride"], node.options["channels"] - node.in_shapes[0][0]
    big = np.iinfo(np.int64).max
    sliced = b.op("Slice", [xs[0], b.constant(f"{node.name}.starts", np.array([0, 0], np.int64)),
                            b.constant(f"{node.name}.ends", np.array([big, big], np.int64)),
                            b.constant(f"{node.name}.axes", np.array([2, 3], np.int64)),
                            b.constant(f"{node.name}.steps", np.array([sh, sw], np.int64))],
                  b.unique(f"{node.name}/subsampled"), f"{node.name}/subsampled")
    pads = np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64)
    return b.op("Pad", [sliced, b.constant(f"{node.name}.pads", pads)], out, node.name)


def _dense(b, node, xs, out):
    inputs = [xs[0], b.param(node, "weight")] + ([b.param(node, "bias")] if node.options["bias"] else [])
    return b.op("Gemm", inputs, out, node.name) if node.options["bias"] else b.op("MatMul", inputs, out, node.name)


def _batchnorm(b, node, xs, out):
    inputs = [xs[0], b.param(node, "weight"), b.param(node, "bias"), b.buffer(node, "running_mean"),
              b.buffer(node, "running_var")]
    return b.op("BatchNormalization", inputs, out, node.name, epsilon=float(node.options["eps"]))


def _unary(op_type: str, **attrs) -> Callable:
    return lambda b, node, xs, out: b.op(op_type, xs, out, node.name, **attrs)


EMIT: dict[str, Callable] = {
    "conv": _conv,
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "adaptive_avgpool": _adaptive_avgpool,
    "global_avgpool": _global_avgpool,
    "subsample": _subsample,
    "shortcut_pad": _shortcut_pad,
    "dense": _dense,
    "flatten": _unary("Flatten", axis=1),
    "relu": _unary("Relu"),
    "leaky_relu": lambda b, node, xs, out: b.op("LeakyRelu", xs, out, node.name, alpha=float(node.options["slope"])),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "softmax": _unary("Softmax", axis=1),
    "batchnorm": _batchnorm,
    "dropout": _unary("Identity"),
    "yolo": _unary("Identity"),  # the raw head; decoding and non-maximum suppression follow the graph
    "localize": _unary("Identity"),  # class scores, then the box's raw numbers
    "lrn": lambda b, node, xs, out: b.op("LRN", xs, out, node.name, size=node.options["size"],
                                         alpha=float(node.options["alpha"]), beta=float(node.options["beta"]),
                                         bias=float(node.options["k"])),
    "add": _unary("Sum"),
    "concat": _unary("Concat", axis=1),
}


def to_onnx(graph, params: dict[str, np.ndarray], buffers: dict[str, np.ndarray], name: str = "cnncli"):
    """The ONNX model (an ``onnx.ModelProto``, checked) of ``graph`` (built without auxiliary heads)."""
    onnx = require()
    b = _Builder(onnx, params, buffers)
    b.used.update((INPUT, OUTPUT))
    tensor = {"input": INPUT}
    for node in graph.nodes:
        out = OUTPUT if node.name == graph.output else b.unique(node.name)
        EMIT[node.kind](b, node, [tensor[i] for i in node.inputs], out)
        tensor[node.name] = out
    float32 = onnx.TensorProto.FLOAT
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            b.nodes, name,
            [onnx.helper.make_tensor_value_info(INPUT, float32, ["batch", *graph.input_shape])],
            [onnx.helper.make_tensor_value_info(OUTPUT, float32, ["batch", *graph.output_shape])],
            initializer=b.initializers),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="cnncli")
    # Models above protobuf's 2 GB limit cannot be checked in memory; none of the built-in ones is.
    onnx.checker.check_model(model)
    return model
