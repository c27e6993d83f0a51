"""Forward and backward of every layer kind, side by side.

Each class takes a graph :class:`~cnncli.model.graph.Node` (options and shapes are
already validated), owns references to its parameter arrays, and implements

* ``forward(xs, train) -> y`` — ``xs`` is the list of input batches; it keeps
  what the backward pass needs;
* ``backward(dy) -> dxs`` — the gradient for each input, and the parameter
  gradients written into ``self.grads`` (overwritten, one call per step).

Shapes below are with the batch axis ``N`` first, NCHW for images, like PyTorch.
Convolution and pooling run on the Numba kernels of :mod:`cnncli.engine.conv` and
:mod:`cnncli.engine.pool` (or, fused, of :mod:`cnncli.engine.fast`);
everything else is a few numpy operations.
"""

from __future__ import annotations

import numpy as np

from cnncli.engine import conv, dense, draws, elementwise, norm, pool, threads
from cnncli.engine.batch import Place
from cnncli.engine.fast import fused, lanes
from cnncli.model.graph import Node


class Layer:
    """Base class: a node of the graph with its parameters and cached forward state.

    ``index`` is the node's position in the graph; ``place`` (set by the
    network before each pass) says where the batch being run sits in the
    whole batch, for the layers that look beyond their own sample
    (:mod:`cnncli.engine.batch`).
    """

    kind = ""
    #: What ``forward`` keeps for ``backward`` (attribute names): dropped by :meth:`release`.
    cached: tuple[str, ...] = ()
    #: Whether a ReLU that alone reads this layer's output may be folded into it (``relu = True``: the
    #: layer then outputs max(y, 0) and takes the ReLU's output gradient); a fast network decides.
    folds_relu = False

    def __init__(self, node: Node, params: dict[str, np.ndarray], buffers: dict[str, np.ndarray], index: int):
        self.node = node
        self.o = node.options
        self.params = params      # suffix -> array, shared with the network
        self.buffers = buffers
        self.grads: dict[str, np.ndarray] = {}
        self.index = index
        self.trainable = node.trainable
        self.place: Place | None = None
        self.relu = False

    @classmethod
    def exchanges(cls, node: Node) -> dict[str, tuple[int, ...]]:
        """The tables of per-sample rows this layer shares with the other parts of a split batch while
        training: key → the shape of one sample's rows (float64). Most layers share none."""
        return {}

    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        raise NotImplementedError

    def release(self) -> None:
        """Drop what the last forward pass kept for a backward pass (an inference pass needs none)."""
        for name in self.cached:
            setattr(self, name, None)

    def backward(self, dy: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


LAYERS: dict[str, type[Layer]] = {}


def register(cls: type[Layer]) -> type[Layer]:
    LAYERS[cls.kind] = cls
    return cls


# --- convolution and pooling -----------------------------------------------------

@register
class Conv(Layer):
    """2-D convolution. x (N, C, H, W) → y (N, F, OH, OW); weight (F, C/groups, KH, KW), bias (F,).

    A ``connections`` table (LeNet-5's C3) masks whole (filter, channel) kernels:
    the masked weights stay at zero and get no gradient.
    """

    kind = "conv"
    cached = ("x",)
    #: Whether backward computes the input's gradient (a network's first layer needs none).
    need_dx = True
    #: Whether the layer runs the strategy :func:`cnncli.engine.conv.pick` picks (a fast network), else the plain
    #: reference convolution (:mod:`cnncli.engine.conv.reference`).
    fast = False

    def __init__(self, *args):
        super().__init__(*args)
        table = self.o["connections"]
        self.mask = None
        if table is not None:
            w = self.params["weight"]
            self.mask = np.asarray(table, dtype=w.dtype)[:, :, None, None]
            w *= self.mask

    def _weight(self) -> np.ndarray:
        # Masking on every pass keeps absent connections absent whatever the stored weights hold.
        w = self.params["weight"]
        return w if self.mask is None else w * self.mask

    def forward(self, xs, train):
        self.x = xs[0]
        o = self.o
        run = conv.conv2d_forward if self.fast else conv.reference.forward
        return run(self.x, self._weight(), self.params.get("bias"), o["stride"], o["padding"], o["dilation"],
                   o["groups"])

    def backward(self, dy):
        o = self.o
        run = conv.conv2d_backward if self.fast else conv.reference.backward
        dx, dw, db = run(
            self.x, self._weight(), dy, o["stride"], o["padding"], o["dilation"], o["groups"],
            need_dx=self.need_dx, need_db="bias" in self.params)
        self.keep_grads(dw, db)
        return [dx]

    def keep_grads(self, dw: np.ndarray, db: np.ndarray | None) -> None:
        """Store the parameter gradients (also a fused chain's); kernels a connection table drops get none."""
        if self.trainable:
            if self.mask is not None:
                dw *= self.mask
            self.grads["weight"] = dw
            if db is not None:
                self.grads["bias"] = db


@register
class MaxPool(Layer):
    """Max pooling. x (N, C, H, W) → y (N, C, OH, OW); the gradient goes to each window's maximum."""

    kind = "maxpool"
    cached = ("argmax",)

    def forward(self, xs, train):
        o = self.o
        self.in_shape = xs[0].shape
        y, self.argmax = pool.maxpool2d_forward(xs[0], o["kernel"], o["stride"], o["padding"],
                                                   o["ceil_mode"])
        return y

    def backward(self, dy):
        return [pool.maxpool2d_backward(dy, self.argmax, self.in_shape)]


@register
class AvgPool(Layer):
    """Average pooling. x (N, C, H, W) → y (N, C, OH, OW); each input gets dy / window size."""

    kind = "avgpool"

    def __init__(self, *args):
        super().__init__(*args)
        # Square tiles (kernel = stride, no padding), as in LeNet-5: a kernel made for them.
        self.tile = self.o["kernel"][0] if pool.is_tile_pool(self.o) else 0

    def forward(self, xs, train):
        o = self.o
        self.in_shape = xs[0].shape
        if self.tile:
            return pool.tile_avgpool_forward(xs[0], self.tile)
        return pool.avgpool2d_forward(xs[0], o["kernel"], o["stride"], o["padding"],
                                         o["ceil_mode"], o["count_include_pad"])

    def backward(self, dy):
        o = self.o
        if self.tile:
            return [pool.tile_avgpool_backward(dy, self.in_shape, self.tile)]
        return [pool.avgpool2d_backward(dy, self.in_shape, o["kernel"], o["stride"], o["padding"],
                                           o["ceil_mode"], o["count_include_pad"])]


@register
class AdaptiveAvgPool(Layer):
    """Adaptive average pooling. x (N, C, H, W) → y (N, C, *output)."""

    kind = "adaptive_avgpool"

    def forward(self, xs, train):
        self.in_shape = xs[0].shape
        if xs[0].shape[2:] == tuple(self.o["output"]):
            return xs[0]  # the usual case at the nominal input size: nothing to average
        return pool.adaptive_avgpool2d_forward(xs[0], self.o["output"])

    def backward(self, dy):
        if self.in_shape[2:] == tuple(self.o["output"]):
            return [dy]
        return [pool.adaptive_avgpool2d_backward(dy, self.in_shape)]


@register
class GlobalAvgPool(Layer):
    """Mean of each channel's plane. x (N, C, H, W) → y (N, C)."""

    kind = "global_avgpool"

    def forward(self, xs, train):
        self.in_shape = xs[0].shape
        return xs[0].mean(axis=(2, 3))

    def backward(self, dy):
        n, c, h, w = self.in_shape
        return [np.broadcast_to((dy / (h * w))[:, :, None, None], self.in_shape).copy()]


@register
class Subsample(Layer):
    """LeNet-5 (1998) subsampling. x (N, C, H, W) → y (N, C, OH, OW) = weight[c] · Σwindow x + bias[c]."""

    kind = "subsample"
    cached = ("s",)

    def forward(self, xs, train):
        o = self.o
        self.in_shape = xs[0].shape
        self.area = o["kernel"][0] * o["kernel"][1]
        self.s = pool.avgpool2d_forward(xs[0], o["kernel"], o["stride"], o["padding"], False, True)
        self.s *= self.area
        w, b = self.params["weight"], self.params["bias"]
        return self.s * w[None, :, None, None] + b[None, :, None, None]

    def backward(self, dy):
        o = self.o
        w = self.params["weight"]
        if self.trainable:
            self.grads["weight"] = (dy * self.s).sum(axis=(0, 2, 3))
            self.grads["bias"] = dy.sum(axis=(0, 2, 3))
        ds = dy * (w[None, :, None, None] * self.area)
        return [pool.avgpool2d_backward(ds, self.in_shape, o["kernel"], o["stride"], o["padding"],
                                           False, True)]


class FusedConv:
    """A conv layer, its activation and its tiled average pooling run as one fused block.

    Which block runs a call is :func:`cnncli.engine.conv.pick`'s answer for the chain: batch-innermost
    (:class:`cnncli.engine.fast.lanes.Block`) for enough samples of a small layer, else NCHW
    (:class:`cnncli.engine.fast.fused.Block`); the two agree up to the rounding of their sums. A conv → relu
    chain that Winograd takes runs as that convolution, then the ReLU in place (:class:`_ThenRelu`).

    Built by :class:`~cnncli.engine.network.Network` (``fast=True``) for a chain
    conv → relu/tanh (→ avgpool) whose inner outputs feed nothing else. The
    conv layer keeps its parameters and receives the weight gradients; the
    network gets the activation and the block's output as the values of the
    activation and pooling nodes (the convolution's own output is never stored).
    """

    def __init__(self, layer: Conv, act: Node, pool_node: Node | None):
        self.conv = layer
        self.nodes = [layer.node.name, act.name] + ([pool_node.name] if pool_node is not None else [])
        self.act = act.kind
        self.pool = pool_node.options["kernel"][0] if pool_node is not None else 0
        #: Each strategy's block, made when first picked; ``block``: the one that ran the last forward pass.
        self.blocks: dict[str, fused.Block | lanes.Block | _ThenRelu] = {}
        self.block: fused.Block | lanes.Block | _ThenRelu | None = None

    @staticmethod
    def fits(node: Node) -> bool:
        """Whether a node can start a fused chain: a conv of stride 1, dilation 1, one group."""
        o = node.options
        return (node.kind == "conv" and o["groups"] == 1 and tuple(o["stride"]) == (1, 1)
                and tuple(o["dilation"]) == (1, 1))

    def call(self, x_shape, w_shape, itemsize: int) -> conv.Call:
        """The chain's convolution on a batch of ``x_shape``, as the picker sees it."""
        return conv.Call(x_shape, w_shape, (1, 1), self.conv.o["padding"], (1, 1), 1, itemsize,
                         chain=(self.act, self.pool))

    def forward(self, xs):
        c = self.conv
        w = c._weight()
        x = xs[0]
        strategy = conv.pick(self.call(x.shape, w.shape, x.dtype.itemsize))
        block = self.blocks.get(strategy.name)
        if block is None:
            padding = c.o["padding"]
            if strategy.block is not None:
                block = strategy.block(padding, self.act, self.pool)
            else:  # a plain convolution's strategy: the chain is conv → relu (strategies._winograd_applies)
                block = _ThenRelu(padding, strategy.name)
            self.blocks[strategy.name] = block
        self.block = block
        return block.forward(x, w, c.params.get("bias"))

    def release(self) -> None:
        """Drop what the block kept for a backward pass."""
        if self.block is not None:
            self.block.release()

    def backward(self, dy):
        c = self.conv
        dx, dw, db = self.block.backward(dy, c._weight(), need_dx=c.need_dx, need_db="bias" in c.params)
        c.grads = {}
        c.keep_grads(dw, db)
        return [dx]


class _ThenRelu:
    """A fused chain's conv → relu run as a plain convolution's strategy, then the ReLU in place: the interface
    of the fused blocks (it keeps its input and the activation)."""

    def __init__(self, padding, strategy: str):
        self.padding = tuple(padding)
        self.strategy = strategy

    def forward(self, x, w, b):
        self.x = x
        y = conv.conv2d_forward(x, w, b, (1, 1), self.padding, (1, 1), 1, strategy=self.strategy)
        self.a = elementwise.relu(y, out=y)
        return self.a, self.a

    def release(self) -> None:
        self.x = self.a = None

    def backward(self, g, w, need_dx=True, need_db=True):
        dz = elementwise.relu_grad(g, self.a)
        return conv.conv2d_backward(self.x, w, dz, (1, 1), self.padding, (1, 1), 1, need_dx=need_dx,
                                    need_db=need_db, strategy=self.strategy)


# --- dense and reshaping ------------------------------------------------------------

@register
class Dense(Layer):
    """Fully connected: y = x·W + b. x (N, in) → y (N, out); weight (in, out), bias (out,).

    As on slide 25: ∂E/∂x = ∂E/∂y · Wᵀ and δW = xᵀ · ∂E/∂y.
    """

    kind = "dense"
    cached = ("x",)
    #: The weight gradient is written into the array of the pass before (kept by the layer): a big layer's
    #: gradient (VGG-16's first, 411 MB) is above glibc's largest mmap threshold, so a fresh array each pass
    #: would be mapped in again a page fault at a time, which about doubles the layer's backward pass.
    dw = None

    def forward(self, xs, train):
        self.x = xs[0]
        y = threads.matmul(self.x, self.params["weight"])
        if "bias" in self.params:
            y += self.params["bias"]
        return y

    def backward(self, dy):
        if self.trainable:
            w = self.params["weight"]
            dtype = np.result_type(self.x, dy)
            if self.dw is None or self.dw.shape != w.shape or self.dw.dtype != dtype:
                self.dw = np.empty(w.shape, dtype=dtype)
            self.grads["weight"] = dense.weight_grad(np.ascontiguousarray(self.x, dtype=dtype),
                                                     np.ascontiguousarray(dy, dtype=dtype), self.dw)
            if "bias" in self.params:
                self.grads["bias"] = dy.sum(axis=0)
        return [threads.matmul(dy, self.params["weight"].T)]


@register
class Flatten(Layer):
    """x (N, C, H, W) → y (N, C·H·W), in C-major order as PyTorch's flatten."""

    kind = "flatten"

    def forward(self, xs, train):
        self.in_shape = xs[0].shape
        return xs[0].reshape(xs[0].shape[0], -1)

    def backward(self, dy):
        return [dy.reshape(self.in_shape)]


# --- activations ------------------------------------------------------------------------

@register
class ReLU(Layer):
    """max(0, x), elementwise; ∂/∂x is 1 where x > 0, else 0 (:mod:`cnncli.engine.elementwise`)."""

    kind = "relu"
    cached = ("y",)

    def forward(self, xs, train):
        self.y = elementwise.relu(xs[0])
        return self.y

    def backward(self, dy):
        return [elementwise.relu_grad(dy, self.y)]


@register
class LeakyReLU(Layer):
    """x if x > 0 else slope·x, elementwise; ∂/∂x is 1 where x > 0, else slope (:mod:`cnncli.engine.elementwise`)."""

    kind = "leaky_relu"
    cached = ("y",)

    def forward(self, xs, train):
        self.y = elementwise.leaky_relu(xs[0], self.o["slope"])
        return self.y

    def backward(self, dy):
        return [elementwise.leaky_relu_grad(dy, self.y, self.o["slope"])]


@register
class Sigmoid(Layer):
    """σ(x) = 1/(1 + e^-x); ∂σ/∂x = σ(1 - σ)."""

    kind = "sigmoid"
    cached = ("y",)

    def forward(self, xs, train):
        self.y = elementwise.sigmoid(xs[0])
        return self.y

    def backward(self, dy):
        return [dy * self.y * (1 - self.y)]


@register
class Tanh(Layer):
    """tanh(x); ∂/∂x = 1 - tanh²."""

    kind = "tanh"
    cached = ("y",)

    def forward(self, xs, train):
        self.y = np.tanh(xs[0])
        return self.y

    def backward(self, dy):
        return [dy * (1 - self.y * self.y)]


@register
class Softmax(Layer):
    """e^x_i / Σ_a e^x_a over axis 1. Backward uses the full Jacobian: dx = y ⊙ (dy − Σ dy ⊙ y)."""

    kind = "softmax"
    cached = ("y",)

    def forward(self, xs, train):
        z = xs[0] - xs[0].max(axis=1, keepdims=True)
        e = np.exp(z)
        self.y = e / e.sum(axis=1, keepdims=True)
        return self.y

    def backward(self, dy):
        return [self.y * (dy - (dy * self.y).sum(axis=1, keepdims=True))]


# --- normalization and regularization --------------------------------------------------

@register
class BatchNorm(Layer):
    """Batch normalization over axis 1. x (N, C, ...) → y, same shape; weight, bias (C,).

    Training normalises with the batch's mean and biased variance and updates
    the running statistics (unbiased variance) as PyTorch does; inference uses
    the running statistics. The passes are the kernels of :mod:`cnncli.engine.norm`:
    ∂E/∂x = w·inv_std·(dy − mean(dy) − x̂·mean(dy·x̂)) while training, w·inv_std·dy after.
    In a part of a split batch the means are the whole batch's: each part's
    per-row sums go through the place's exchange (``forward``: each row's sum
    and squared deviations; ``backward``: Σ dy and Σ dy·x̂, in the batch's units).
    A frozen layer (:attr:`~cnncli.model.graph.Node.frozen`) normalises with its
    running statistics while training too, and leaves them as they are
    (torchvision's ``FrozenBatchNorm2d``).
    """

    kind = "batchnorm"
    cached = ("x", "mean", "y")
    folds_relu = True

    @classmethod
    def exchanges(cls, node):
        if node.frozen:
            return {}  # the running statistics, no batch's sums
        rows = (node.out_shape[0], 2)  # per channel: two sums
        return {f"{node.name}.forward": rows, f"{node.name}.backward": rows}

    def forward(self, xs, train):
        x = xs[0]
        train = self.train = train and not self.node.frozen
        if train:
            place = self.place
            per_row = norm.per_row(x.shape)
            rows = place.gather(f"{self.node.name}.forward", norm.row_moments(x))
            mean, var = norm.moments(rows, per_row)
            if place.first:  # the running statistics are updated once per batch
                m = place.total * per_row
                mom = self.o["momentum"]
                self.buffers["running_mean"] *= 1 - mom
                self.buffers["running_mean"] += (mom * mean).astype(x.dtype)
                self.buffers["running_var"] *= 1 - mom
                self.buffers["running_var"] += (mom * var * (m / max(m - 1, 1))).astype(x.dtype)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        self.inv_std = (1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + self.o["eps"])).astype(x.dtype)
        self.x, self.mean = x, mean
        y = norm.forward(x, mean, self.inv_std, self.params["weight"], self.params["bias"], self.relu)
        self.y = y if self.relu else None
        return y

    def backward(self, dy):
        rows = norm.grad_rows(dy, self.x, self.mean, self.inv_std, self.y)
        own = norm.totals(rows)
        count = dy.shape[0] * norm.per_row(dy.shape)
        sums = own
        if self.train and self.place.exchange is not None:
            # This part's dy is its own loss's (a mean over its samples): scaled by its share of the
            # batch it is the batch loss's; the sums come back in this part's units.
            w = self.place.weight
            sums = norm.totals(self.place.gather(f"{self.node.name}.backward", rows * w)) / w
            count = self.place.total * norm.per_row(dy.shape)
        dx = norm.input_grad(dy, self.x, self.mean, self.inv_std, self.params["weight"], sums, count, self.train,
                             self.y)
        if self.trainable:
            self.grads["weight"], self.grads["bias"] = own[:, 1].astype(dy.dtype), own[:, 0].astype(dy.dtype)
        return [dx]


@register
class Dropout(Layer):
    """While training, zero each activation with probability ``rate`` and scale the rest by 1/(1 - rate).

    The mask is drawn per element from (seed, layer, pass, index in the batch)
    (:mod:`cnncli.engine.draws`), the same whether or not the batch is split.
    """

    kind = "dropout"
    cached = ("mask",)

    def forward(self, xs, train):
        rate = self.o["rate"]
        if not train or rate == 0:
            self.mask = None
            return xs[0]
        place = self.place
        key = draws.key(place.seed, self.index, place.draw)
        self.mask = draws.dropout_mask(xs[0].shape, place.start, rate, key, xs[0].dtype)
        return xs[0] * self.mask

    def backward(self, dy):
        return [dy if self.mask is None else dy * self.mask]


@register
class Yolo(Layer):
    """The detection head (:mod:`cnncli.engine.yolo`): x (N, 5B + C, S_h, S_w) passed on as it is; the yolo loss
    reads it with the settings of this layer's options."""

    kind = "yolo"

    def forward(self, xs, train):
        return xs[0]

    def backward(self, dy):
        return [dy]


@register
class Localize(Yolo):
    """The single-object localization head (:mod:`cnncli.engine.localize`): x (N, C + 4) passed on as it is."""

    kind = "localize"


@register
class LRN(Layer):
    """Local response normalization across channels, as PyTorch's LocalResponseNorm.

    x (N, C, H, W) → y_c = x_c / (k + α/n · Σ_{c' near c} x_c'²)^β, the window
    running from c − n//2 to c + (n−1)//2.
    """

    kind = "lrn"
    cached = ("x", "s", "y")

    def _window_sum(self, a: np.ndarray, before: int, after: int) -> np.ndarray:
        # Σ over channels c-before .. c+after via a cumulative sum along axis 1.
        n, c = a.shape[:2]
        padded = np.zeros((n, c + before + after + 1) + a.shape[2:], dtype=a.dtype)
        np.cumsum(a, axis=1, out=padded[:, before + 1: before + 1 + c])
        padded[:, before + 1 + c:] = padded[:, before + c: before + c + 1]
        return padded[:, before + after + 1:] - padded[:, :c]

    def forward(self, xs, train):
        x = xs[0]
        size, alpha, beta, k = self.o["size"], self.o["alpha"], self.o["beta"], self.o["k"]
        self.x = x
        self.s = k + (alpha / size) * self._window_sum(x * x, size // 2, (size - 1) // 2)
        self.y = x * self.s ** -beta
        return self.y

    def backward(self, dy):
        size, alpha, beta = self.o["size"], self.o["alpha"], self.o["beta"]
        # Channel j appears in the windows of c = j-(n-1)//2 .. j+n//2.
        t = dy * self.y / self.s
        back = self._window_sum(t, (size - 1) // 2, size // 2)
        return [dy * self.s ** -beta - (2 * alpha * beta / size) * self.x * back]


# --- joining paths ----------------------------------------------------------------------

@register
class ShortcutPad(Layer):
    """He et al.'s option-A shortcut, no parameters. x (N, C, H, W) → y (N, channels, ⌈H/sh⌉, ⌈W/sw⌉).

    Forward: y[:, :C] = x[:, :, ::sh, ::sw] and y[:, C:] = 0 (the zero channels after the
    input's own, see ``model.kinds``). Backward: each kept cell gets its dy,
    dx[:, :, ::sh, ::sw] = dy[:, :C]; the cells it skipped get 0 (the zero channels
    depend on nothing).
    """

    kind = "shortcut_pad"

    def forward(self, xs, train):
        x = xs[0]
        sh, sw = self.o["stride"]
        self.in_shape = x.shape
        kept = x[:, :, ::sh, ::sw]
        y = np.zeros((x.shape[0], self.o["channels"]) + kept.shape[2:], dtype=x.dtype)
        y[:, :x.shape[1]] = kept
        return y

    def backward(self, dy):
        sh, sw = self.o["stride"]
        dx = np.zeros(self.in_shape, dtype=dy.dtype)
        dx[:, :, ::sh, ::sw] = dy[:, :self.in_shape[1]]
        return [dx]


@register
class Add(Layer):
    """Elementwise sum of its inputs (a residual connection); each input gets dy.

    With a ReLU folded in (``relu``), max(sum, 0) in the same pass, and dy through it.
    """

    kind = "add"
    cached = ("y",)
    folds_relu = True

    def forward(self, xs, train):
        self.n = len(xs)
        if self.relu and len(xs) == 2 and xs[0].shape == xs[1].shape and xs[0].dtype == xs[1].dtype:
            self.y = elementwise.add_relu(xs[0], xs[1])
            return self.y
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        self.y = elementwise.relu(y) if self.relu else None
        return y if self.y is None else self.y

    def backward(self, dy):
        if self.relu:
            dy = elementwise.relu_grad(dy, self.y)
        return [dy] * self.n


@register
class Concat(Layer):
    """Join inputs along axis 1 (channels); backward splits dy back into their widths."""

    kind = "concat"

    def forward(self, xs, train):
        self.splits = np.cumsum([x.shape[1] for x in xs])[:-1]
        return np.concatenate(xs, axis=1)

    def backward(self, dy):
        return [np.ascontiguousarray(piece) for piece in np.split(dy, self.splits, axis=1)]
