"""A runnable network: a shape-inferred graph with parameter arrays and layers.

``Network.forward`` runs the nodes in order; ``Network.loss_and_backward``
adds the loss of the main output (and of auxiliary outputs while training) and
walks the nodes backwards, summing the gradients of nodes read by several
layers (residual and inception branches). Parameters live in one flat dict
keyed like the checkpoint, ``<node>.weight``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cnncli.engine import rules, threads
from cnncli.engine.batch import Place, whole
from cnncli.engine.fast.vector import ACTIVATIONS
from cnncli.engine.init import initial_value
from cnncli.engine.layers import LAYERS, FusedConv
from cnncli.engine.losses import Loss
from cnncli.engine.parts import Parts, usable_cores
from cnncli.engine.pool import is_tile_pool
from cnncli.errors import CheckpointError, UsageError
from cnncli.model.graph import Graph, Node, ancestors
from cnncli.model.kinds import fmt_shape


def _readers(graph: Graph) -> dict[str, list[Node]]:
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    return readers


def fused_chains(graph: Graph) -> dict[str, tuple[Node, Node | None]]:
    """The chains a fast network fuses (:class:`~cnncli.engine.layers.FusedConv`), by their conv node: a conv of
    stride 1, dilation 1, one group, whose output only an activation reads (relu, tanh), and the tiled average
    pooling that alone reads the activation, if one does."""
    readers = _readers(graph)
    ends = {graph.output, *graph.aux_outputs}

    def only_reader(name: str) -> Node | None:
        r = readers.get(name, [])
        return r[0] if len(r) == 1 and name not in ends else None

    chains: dict[str, tuple[Node, Node | None]] = {}
    for node in graph.nodes:
        if not FusedConv.fits(node):
            continue
        act = only_reader(node.name)
        if act is None or act.kind not in ACTIVATIONS:
            continue
        pool = only_reader(act.name)
        if pool is not None and not (pool.kind == "avgpool" and is_tile_pool(pool.options)):
            pool = None
        chains[node.name] = (act, pool)
    return chains


class Network:
    """Parameters, buffers and layers of a graph, with forward and backward passes.

    ``fast=True`` is for training and inference, where only the outputs, the
    loss and the parameter gradients matter: chains conv → relu/tanh
    (→ tiled avgpool) run fused (:class:`~cnncli.engine.layers.FusedConv`), so the
    convolution's own output is not in ``values`` and the chain's inner nodes
    get no ``node_grads``; a ReLU that alone reads a batch norm or a residual
    sum runs inside that layer (``folded``; that layer's value is then the
    ReLU's output); no gradient is computed for the input batch when the first
    layer is a convolution (``input_grad`` stays None); and in a network with
    frozen layers (:attr:`~cnncli.model.graph.Node.frozen`) the backward pass stops
    where no layer upstream learns (the input's gradient is not computed either).
    The default keeps every value and gradient, as ``backprop-trace`` needs.
    """

    def __init__(self, graph: Graph, dtype: str | np.dtype = "float32", seed: int = 0, fast: bool = False,
                 params: Mapping[str, np.ndarray] | None = None, workers: int | None = None,
                 buffers: Mapping[str, np.ndarray] | None = None, init: bool = True):
        """``params``, ``buffers``: arrays to use as the parameters and buffers, not copied (a
        replica's); ``workers``: how many parts a batch may be split into (default: one per engine
        thread for a fast network); ``init=False``: the parameters are left unset, for
        :meth:`load_state_dict` to fill (drawing ResNet-50's initial weights costs about a second)."""
        self.graph = graph
        self.fast = fast
        self.dtype = np.dtype(dtype)
        if seed < 0:
            raise UsageError(f"the seed must be 0 or more, got {seed}")
        self.seed = seed
        #: Training passes made: dropout's draws are numbered by it (cnncli.engine.draws).
        self.passes = 0
        rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.layers = {}
        for index, node in enumerate(graph.nodes):
            own = {}
            for suffix in node.params:
                key = f"{node.name}.{suffix}"
                if params is not None:
                    value = params[key]
                elif init:
                    value = initial_value(node, suffix, rng, self.dtype)
                else:
                    value = np.empty(node.params[suffix], dtype=self.dtype)
                own[suffix] = self.params[key] = value
            bufs = {}
            for suffix, shape in node.buffers.items():
                key = f"{node.name}.{suffix}"
                if buffers is not None:
                    value = buffers[key]
                else:
                    value = (np.ones if suffix == "running_var" else np.zeros)(shape, dtype=self.dtype)
                bufs[suffix] = self.buffers[key] = value
            self.layers[node.name] = layer = LAYERS[node.kind](node, own, bufs, index)
            if fast and node.kind == "conv":
                layer.fast = True  # the strategies conv.pick picks; a plain network runs the reference
        #: Tables of per-sample rows that the parts of a split training batch share (see Layer.exchanges).
        self.exchanges = exchanges(graph)
        # node name -> the fused chain it starts (forward) or ends (backward); inner nodes -> None
        self.fused_head: dict[str, FusedConv] = {}
        self.fused_tail: dict[str, FusedConv] = {}
        self.fused_inner: set[str] = set()
        #: ReLU node -> the node it is folded into (that layer's ``relu``); its value is that node's.
        self.folded: dict[str, str] = {}
        #: With frozen layers, the nodes whose output's gradient a fast network's backward pass computes:
        #: those with trainable parameters and every node downstream of one; upstream no gradient is of use.
        #: None: every node's (the input's gradient too, unless the first layer is a convolution).
        self.learning: set[str] | None = None
        if fast:
            self._fuse()
            if any(node.frozen for node in graph.nodes):
                self.learning = set()
                for node in graph.nodes:
                    if (node.trainable and node.params) or any(i in self.learning for i in node.inputs):
                        self.learning.add(node.name)
            for node in graph.nodes:
                layer = self.layers[node.name]
                if node.kind == "conv" and (list(node.inputs) == ["input"] or self.learning is not None
                                            and not any(i in self.learning for i in node.inputs)):
                    layer.need_dx = False  # nothing needs its input's gradient
        # A fast network splits a batch into parts, one per core.
        self.parts: Parts | None = None
        if fast:
            cores = usable_cores() if workers is None else workers
            if cores > 1:
                self.parts = Parts(self, cores)
        main = ancestors({n.name: n.inputs for n in graph.nodes}, [graph.output])
        self.infer_order = [n for n in graph.nodes if n.name in main]
        #: node -> the values an inference pass no longer needs once that node has run (their last reader).
        self.spent: dict[str, list[str]] = {n.name: [] for n in self.infer_order}
        last: dict[str, str] = {}
        for node in self.infer_order:
            for name in node.inputs:
                last[name] = node.name
        for name, reader in last.items():
            self.spent[reader].append(name)
        self.values: dict[str, np.ndarray] = {}
        self.node_grads: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.input_grad: np.ndarray | None = None

    def _fuse(self) -> None:
        readers = _readers(self.graph)
        ends = {self.graph.output, *self.graph.aux_outputs}

        def only_reader(name: str) -> Node | None:
            r = readers.get(name, [])
            return r[0] if len(r) == 1 and name not in ends else None

        for name, (act, pool) in fused_chains(self.graph).items():
            chain = FusedConv(self.layers[name], act, pool)
            self.fused_head[name] = chain
            self.fused_tail[chain.nodes[-1]] = chain
            self.fused_inner.update(chain.nodes)
        # A ReLU that alone reads a batch norm or a residual sum runs in that layer's pass.
        for node in self.graph.nodes:
            if node.kind != "relu" or node.name in ends:
                continue
            (source,) = node.inputs
            layer = self.layers.get(source)
            if layer is not None and layer.folds_relu and source not in self.fused_inner \
                    and only_reader(source) is node:
                layer.relu = True
                self.folded[node.name] = source

    # -- parameters --
    def trainable(self) -> dict[str, np.ndarray]:
        return {f"{n.name}.{k}": self.params[f"{n.name}.{k}"] for n in self.graph.nodes
                if n.trainable for k in n.params}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**{k: v.copy() for k, v in self.params.items()}, **{k: v.copy() for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict[str, np.ndarray], source: str = "checkpoint") -> None:
        """Copy weights in; a missing, unexpected or misshapen array is a CheckpointError naming it."""
        expected = {**self.params, **self.buffers}
        missing = [k for k in expected if k not in state]
        if missing:
            raise CheckpointError(f"{source} has no '{missing[0]}'"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                  + " — was it saved from another model?")
        for key, arr in expected.items():
            got = np.asarray(state[key])
            if got.shape != arr.shape:
                raise CheckpointError(f"{source}: '{key}' has shape {fmt_shape(got.shape)} "
                                      f"but the model needs {fmt_shape(arr.shape)}")
            if not np.all(np.isfinite(got)):
                raise CheckpointError(f"{source}: '{key}' holds NaN or infinite values")
            arr[...] = got
        unexpected = [k for k in state if k not in expected and "." in k and not k.startswith(("optim.", "meta."))]
        if unexpected:
            raise CheckpointError(f"{source} has '{unexpected[0]}', which the model does not have")

    # -- passes --
    def _check_input(self, x: np.ndarray) -> np.ndarray:
        want = self.graph.input_shape
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != tuple(want):
            raise UsageError(f"input batch has shape {fmt_shape(x.shape)}; the model takes "
                             f"N×{fmt_shape(want)}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    # -- splitting a batch into parts (cnncli.engine.parts) --
    @property
    def workers(self) -> int:
        """How many parts a batch may be split into (1: never split)."""
        return 1 if self.parts is None else self.parts.cores

    @property
    def processes_failed(self) -> str | None:
        """Why parts went back from worker processes to threads (None: they did not)."""
        return None if self.parts is None else self.parts.processes_failed

    def spawn_workers(self, max_batch: int) -> None:
        """Start worker processes for the training batches (up to ``max_batch``) to come; see :class:`Parts`.

        Call :meth:`close` when done.
        """
        if self.parts is not None:
            self.parts.spawn_workers(max_batch)

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self.parts is not None:
            self.parts.close()

    def _split(self, n: int) -> list[slice] | None:
        """The parts of a batch of ``n`` samples, or None when it runs whole."""
        if self.parts is None:
            return None
        slices = self.parts.slices(n)
        return slices if len(slices) > 1 else None

    # -- passes --
    def _draw(self, train: bool) -> int:
        """The number of this pass's random draws: a training pass takes the next one."""
        draw = self.passes
        if train:
            self.passes += 1
        return draw

    def forward(self, x: np.ndarray, train: bool = False, keep: tuple[str, ...] = ()) -> np.ndarray:
        """x (N, *input) → the main output (N, *output). While training, auxiliary heads run too.

        A fast network may run the batch in parts (on threads); ``values`` then
        joins the parts' values on access. An inference pass of a fast network
        keeps only the output and the nodes named in ``keep`` (see :meth:`forward_part`).
        """
        draw = self._draw(train)
        slices = self._split(x.shape[0])
        if slices is None:
            if self.fast and not train and rules.serial(len(x) * self.graph.macs):
                with threads.numba_threads(1):
                    return self.forward_part(x, train, whole(len(x), draw, self.seed), keep)
            return self.forward_part(x, train, whole(len(x), draw, self.seed), keep)
        return self.parts.forward(self._check_input(x), slices, train, draw, keep)

    def forward_part(self, x: np.ndarray, train: bool, place: Place, keep: tuple[str, ...] = ()) -> np.ndarray:
        """The forward pass of this network alone, never split: x (N, *input) → the main output.

        ``place``: where ``x`` sits in its batch (:mod:`cnncli.engine.batch`).
        An inference pass of a fast network holds no more than it must, as
        PyTorch's inference mode does: the layers keep nothing for a backward
        pass, and a node's value is dropped once its last reader has run, unless
        it is the output or in ``keep``; ``values`` then holds just those.
        """
        for layer in self.layers.values():
            layer.place = place
        values = {"input": self._check_input(x)}
        lean = self.fast and not train
        order = self.graph.nodes if train else self.infer_order
        folded = self.folded
        for node in order:
            if node.name in folded:
                values[node.name] = values[folded[node.name]]
            elif node.name in self.fused_inner:
                chain = self.fused_head.get(node.name)
                if chain is not None:
                    outs = chain.forward([values[i] for i in node.inputs])
                    values.update(zip(chain.nodes[1:], outs))
                    if lean:
                        chain.release()
            else:
                layer = self.layers[node.name]
                values[node.name] = layer.forward([values[i] for i in node.inputs], train)
                if lean:
                    layer.release()
            if lean:
                for name in self.spent[node.name]:
                    if name not in keep and name != self.graph.output:
                        values.pop(name, None)
        self.values = values
        return values[self.graph.output]

    def loss_and_backward(self, x: np.ndarray, target: np.ndarray, loss: Loss,
                          train: bool = True, keep_node_grads: bool = False) -> tuple[float, np.ndarray]:
        """Forward, loss (main + weighted auxiliary outputs when training), backward.

        x (N, *input), target (N,) class indices or (N, K) → (loss, main output
        (N, *output)). Parameter gradients land in ``self.grads``; with
        ``keep_node_grads`` every node's ∂E/∂output in ``self.node_grads``. A
        fast network of per-sample layers runs the batch in parts
        (:mod:`cnncli.engine.parts`, on threads or, after :meth:`spawn_workers`,
        in worker processes); node values are then not kept.
        """
        draw = self._draw(train)
        slices = None if keep_node_grads or len(target) != len(x) else self._split(len(x))
        if slices is None:
            return self.loss_and_backward_part(x, target, loss, train, whole(len(x), draw, self.seed),
                                               keep_node_grads)
        return self.parts.loss_and_backward(self._check_input(x), target, loss, train, slices, draw)

    def loss_and_backward_part(self, x: np.ndarray, target: np.ndarray, loss: Loss, train: bool,
                               place: Place, keep_node_grads: bool = False) -> tuple[float, np.ndarray]:
        """:meth:`loss_and_backward` on this network alone, never split (a part's pass at ``place``)."""
        out = self.forward_part(x, train, place)
        heads = {self.graph.output: 1.0, **(self.graph.aux_outputs if train else {})}
        seeds: dict[str, np.ndarray] = {}
        total = 0.0
        for name, weight in heads.items():
            source = loss.source(self.graph, name)
            value = self.values[source]
            if loss.head is not None:
                _check_head_target(target, value.shape, source)
            elif value.ndim != 2:
                raise UsageError(f"the loss needs a flat output (classes), but '{source}' gives "
                                 f"{fmt_shape(value.shape[1:])}")
            else:
                _check_target(target, value.shape, source)
            lv, g = loss.fn(value, target)
            total += weight * lv
            seeds[source] = seeds[source] + weight * g if source in seeds else weight * g
        self.backward(seeds, keep_node_grads)
        return total, out

    def predict(self, images, batch_size: int, source: str | None = None, prepare=None) -> np.ndarray:
        """Inference in batches of ``batch_size``: the output of node ``source`` (default: the main output).

        images (N, *input) → (N, *output of source). ``prepare`` turns each
        batch of ``images`` (a slice) into the network's input first: raw
        dataset images are adapted and normalised a batch at a time.
        """
        source = source or self.graph.output
        n = len(images)
        result: np.ndarray | None = None
        for i in range(0, n, batch_size):
            batch = images[i:i + batch_size]
            self.forward(batch if prepare is None else prepare(batch), train=False, keep=(source,))
            out = self.values[source]
            if result is None:
                result = np.empty((n, *out.shape[1:]), dtype=out.dtype)
            result[i:i + len(out)] = out
        if result is None:
            return np.empty((0, *self.graph[source].out_shape), dtype=self.dtype)
        return result

    def backward(self, seeds: dict[str, np.ndarray], keep_node_grads: bool = False) -> None:
        """Propagate ∂E/∂(node output) from ``seeds`` back to every parameter and the input."""
        grads = dict(seeds)
        owned: set[str] = set()  # gradients summed here, into arrays no layer handed out
        self.node_grads = {}
        # The last step's parameter gradients go here, not when this step's replace them: VGG-16's dense layers'
        # alone are 0.5 GB, which held through the backward pass would add as much to its peak memory.
        self.grads = {}
        for layer in self.layers.values():
            layer.grads = {}
        learning = self.learning
        for node in reversed(self.graph.nodes):
            g = grads.pop(node.name, None)
            if g is None or (learning is not None and node.name not in learning):
                continue
            if keep_node_grads:
                self.node_grads[node.name] = g
            if node.name in self.folded:  # the layer it is folded into takes its output's gradient
                grads[self.folded[node.name]] = g
                continue
            if node.name in self.fused_inner:
                chain = self.fused_tail.get(node.name)
                if chain is None:
                    continue
                node = self.graph[chain.nodes[0]]
                dxs = chain.backward(g)
            else:
                dxs = self.layers[node.name].backward(g)
            for inp, dx in zip(node.inputs, dxs):
                if dx is None or (learning is not None and inp not in learning):  # not computed, or of no use
                    continue
                # A layer may hand the same array to several inputs: add in place only into a sum made here.
                if inp not in grads:
                    grads[inp] = dx
                elif inp in owned:
                    grads[inp] += dx
                else:
                    grads[inp] = grads[inp] + dx
                    owned.add(inp)
        self.input_grad = grads.get("input")
        self.grads = {}
        for node in self.graph.nodes:
            layer = self.layers[node.name]
            for suffix in node.params:
                if node.trainable:
                    key = f"{node.name}.{suffix}"
                    g = layer.grads.get(suffix)
                    self.grads[key] = np.zeros_like(self.params[key]) if g is None else g

    def gradients(self, node: str, seed: np.ndarray, at: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """The gradient of Σ seed ⊙ (output of ``node``) with respect to the outputs of the nodes ``at`` and to
        the input (key ``"input"``), after a :meth:`forward` of this (plain) network.

        ``seed`` has the shape of ``node``'s output in that pass, (N, *out); a one-hot row picks one class
        score per sample (what Grad-CAM and saliency maps differentiate). The pass before sets the mode:
        after ``forward(x, train=False)`` batch norm uses its running statistics and dropout passes
        everything, in the backward pass as in the forward one. A node of ``at`` that ``node`` does not
        depend on gets zeros. Only a plain network (``fast=False``) keeps the values and node gradients this
        needs; the parameter gradients (``grads``) are computed on the way, as by :meth:`backward`.
        """
        if self.fast:
            raise ValueError("gradients need a plain network (fast=False): a fast one keeps no input gradient")
        value = self.values[node]
        if seed.shape != value.shape:
            raise ValueError(f"the seed has shape {fmt_shape(seed.shape)}; '{node}' gives {fmt_shape(value.shape)}")
        self.backward({node: np.asarray(seed, dtype=value.dtype)}, keep_node_grads=True)
        out = {name: self.node_grads.get(name, np.zeros_like(self.values[name])) for name in at}
        out["input"] = self.input_grad if self.input_grad is not None else np.zeros_like(self.values["input"])
        return out


def exchanges(graph: Graph) -> dict[str, tuple[int, ...]]:
    """The tables of per-sample rows that the parts of a split training batch of ``graph`` share:
    key → one sample's rows' shape (float64); see :mod:`cnncli.engine.batch`."""
    tables: dict[str, tuple[int, ...]] = {}
    for node in graph.nodes:
        tables.update(LAYERS[node.kind].exchanges(node))
    return tables


def _check_head_target(target: np.ndarray, out_shape: tuple[int, ...], source: str) -> None:
    """A detection head's target is shaped as its output (:func:`cnncli.engine.yolo.encode`)."""
    if target.shape != out_shape:
        raise UsageError(f"target has shape {fmt_shape(target.shape)}; '{source}' gives {fmt_shape(out_shape)}")


def _check_target(target: np.ndarray, out_shape: tuple[int, ...], source: str) -> None:
    n, k = out_shape
    if target.ndim == 1:
        if target.shape[0] != n or (target.size and (target.min() < 0 or target.max() >= k)):
            raise UsageError(f"targets must be {n} class indices in 0..{k - 1} for '{source}'")
    elif target.shape != (n, k):
        raise UsageError(f"target has shape {fmt_shape(target.shape)}; '{source}' gives {n}×{k}")
