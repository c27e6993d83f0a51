"""A runnable network: a shape-inferred graph with parameter arrays and layers.

``Network.forward`` runs the nodes in order; ``Network.loss_and_backward``
adds the loss of the main output (and of auxiliary outputs while training) and
walks the nodes backwards, summing the gradients of nodes read by several
layers (residual and inception branches). Parameters live in one flat dict
keyed like the checkpoint, ``<node>.weight``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from cnncli.engine import parallel, threads
from cnncli.engine.fast.vector import ACTIVATIONS
from cnncli.engine.layers import LAYERS, FusedConv
from cnncli.engine.losses import Loss
from cnncli.engine.pool import is_tile_pool
from cnncli.errors import CheckpointError, UsageError
from cnncli.model.graph import Graph, Node, ancestors
from cnncli.model.kinds import fmt_shape


def _fan_in(node: Node) -> int:
    shape = node.params["weight"]
    if node.kind == "dense":
        return shape[0]
    if node.kind == "subsample":
        return node.options["kernel"][0] * node.options["kernel"][1]
    return math.prod(shape[1:])


def _fan_out(node: Node) -> int:
    shape = node.params["weight"]
    if node.kind == "dense":
        return shape[1]
    return shape[0] * math.prod(shape[2:]) if len(shape) == 4 else shape[0]


#: A fast network splits a batch across cores only into parts of at least this many samples.
MIN_PART = 16


# Layers whose output for one sample depends on the others in the batch (batch
# statistics) or on a shared random generator: a network with them never splits.
_UNSPLITTABLE = ("batchnorm", "dropout")

def _engine_threads() -> int:
    """Cores a batch may be split across: Numba's thread count, at most the CPUs this process may use."""
    import os

    import numba

    try:
        usable = len(os.sched_getaffinity(0))  # taskset, a container's cpuset
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(1, min(numba.config.NUMBA_NUM_THREADS, usable))


class _MergedValues(Mapping):
    """The node values of a batch computed in parts: each one joined along the batch on access."""

    def __init__(self, parts: list[dict[str, np.ndarray]]):
        self.parts = parts

    def __getitem__(self, key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in self.parts])

    def __iter__(self):
        return iter(self.parts[0])

    def __len__(self) -> int:
        return len(self.parts[0])


def initial_value(node: Node, suffix: str, rng: np.random.Generator, dtype) -> np.ndarray:
    """The initial array of one parameter: inline values, a named scheme, or PyTorch's default."""
    shape = node.params[suffix]
    init = node.spec.init
    scheme: Any = init.get(suffix, "default") if isinstance(init, dict) else (init or "default")
    if not isinstance(scheme, str):
        return np.broadcast_to(np.asarray(scheme, dtype=dtype), shape).copy()
    if scheme == "zeros":
        return np.zeros(shape, dtype=dtype)
    if node.kind == "batchnorm":
        return (np.ones if suffix == "weight" else np.zeros)(shape, dtype=dtype)
    if suffix == "bias" and scheme != "default":
        return np.zeros(shape, dtype=dtype)
    fan_in = _fan_in(node)
    if scheme == "default":
        # PyTorch's kaiming_uniform(a=√5) for weights and its bias rule both reduce to ±1/√fan_in.
        bound = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(dtype)
    if scheme == "he":
        return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)
    bound = math.sqrt(6.0 / (fan_in + _fan_out(node)))  # xavier
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Network:
    """Parameters, buffers and layers of a graph, with forward and backward passes.

    ``fast=True`` is for training and inference, where only the outputs, the
    loss and the parameter gradients matter: chains conv → relu/tanh
    (→ tiled avgpool) run fused (:class:`~cnncli.engine.layers.FusedConv`), so the
    convolution's own output is not in ``values`` and the chain's inner nodes
    get no ``node_grads``; and no gradient is computed for the input batch
    (``input_grad`` stays None). The default keeps every value and gradient,
    as ``backprop-trace`` needs.
    """

    def __init__(self, graph: Graph, dtype: str | np.dtype = "float32", seed: int = 0, fast: bool = False,
                 params: Mapping[str, np.ndarray] | None = None, workers: int | None = None):
        """``params``: arrays to use as the parameters, not copied (a replica's); ``workers``: how many
        parts a batch may be split into (default: one per engine thread for a fast network)."""
        self.graph = graph
        self.fast = fast
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        # Dropout draws from its own generator so that its state can be checkpointed.
        self.rng = np.random.default_rng([seed, 1])
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.layers = {}
        for node in graph.nodes:
            own = {}
            for suffix in node.params:
                key = f"{node.name}.{suffix}"
                value = params[key] if params is not None else initial_value(node, suffix, rng, self.dtype)
                own[suffix] = self.params[key] = value
            bufs = {}
            for suffix, shape in node.buffers.items():
                fill = np.ones if suffix == "running_var" else np.zeros
                bufs[suffix] = self.buffers[f"{node.name}.{suffix}"] = fill(shape, dtype=self.dtype)
            self.layers[node.name] = LAYERS[node.kind](node, own, bufs, self.rng)
        # node name -> the fused chain it starts (forward) or ends (backward); inner nodes -> None
        self.fused_head: dict[str, FusedConv] = {}
        self.fused_tail: dict[str, FusedConv] = {}
        self.fused_inner: set[str] = set()
        if fast:
            self._fuse()
            for node in graph.nodes:
                layer = self.layers[node.name]
                if node.kind == "conv" and list(node.inputs) == ["input"]:
                    layer.need_dx = False  # nothing needs the input's gradient
        # Data parallelism over threads (fast networks only): replicas share the
        # parameter arrays, each runs its part of the batch with one Numba
        # thread and one-thread BLAS, and the parts' gradients are averaged.
        # Unlike prange inside each kernel, the GEMMs run in parallel too, and
        # the threads meet once per pass instead of after every kernel.
        self.workers = 1
        self.splits = fast and not any(n.kind in _UNSPLITTABLE for n in graph.nodes)
        if self.splits:
            self.workers = max(1, _engine_threads()) if workers is None else workers
        self._replicas: list[Network] = []
        self._group: parallel.ProcessGroup | None = None
        #: Why parts went back from processes to threads (None: they did not).
        self.processes_failed: str | None = None
        main = ancestors({n.name: n.inputs for n in graph.nodes}, [graph.output])
        self.infer_order = [n for n in graph.nodes if n.name in main]
        self.values: dict[str, np.ndarray] = {}
        self.node_grads: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.input_grad: np.ndarray | None = None

    def _fuse(self) -> None:
        readers: dict[str, list[Node]] = {}
        for node in self.graph.nodes:
            for name in node.inputs:
                readers.setdefault(name, []).append(node)
        ends = {self.graph.output, *self.graph.aux_outputs}

        def only_reader(name: str) -> Node | None:
            r = readers.get(name, [])
            return r[0] if len(r) == 1 and name not in ends else None

        for node in self.graph.nodes:
            if not FusedConv.fits(node):
                continue
            act = only_reader(node.name)
            if act is None or act.kind not in ACTIVATIONS:
                continue
            pool = only_reader(act.name)
            if pool is not None and not (pool.kind == "avgpool" and is_tile_pool(pool.options)):
                pool = None
            chain = FusedConv(self.layers[node.name], act, pool)
            self.fused_head[node.name] = chain
            self.fused_tail[chain.nodes[-1]] = chain
            self.fused_inner.update(chain.nodes)

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

    # -- splitting a batch across threads --
    def _parts(self, n: int) -> list[slice] | None:
        """Inference: one part per worker thread (of at least MIN_PART samples), or None."""
        blocks = self._blocks(n)
        return blocks if len(blocks) > 1 else None

    def _blocks(self, n: int) -> list[slice]:
        """Training: a batch's contiguous blocks, one per core (of at least MIN_PART samples)."""
        k = max(1, min(self.workers, n // MIN_PART))
        bounds = [n * i // k for i in range(k + 1)]
        return [slice(a, b) for a, b in itertools.pairwise(bounds)]

    def _replica(self, i: int) -> Network:
        while len(self._replicas) < i:
            r = Network(self.graph, self.dtype, fast=True, params=self.params, workers=1)
            r.buffers, r.rng = self.buffers, self.rng
            self._replicas.append(r)
        return self._replicas[i - 1]

    def spawn_workers(self, max_batch: int) -> None:
        """Start replicas in child processes for the training batches (up to ``max_batch``) to come.

        They boot in the background; until they are ready (or if they fail),
        :meth:`loss_and_backward` splits batches across threads as before.
        Call :meth:`close` when done. Does nothing unless batches of
        ``max_batch`` would be split (see :mod:`cnncli.engine.parallel`).
        """
        blocks = self._blocks(max_batch)
        if len(blocks) < 2 or self._group is not None or not parallel.available():
            return
        capacity = max(b.stop - b.start for b in blocks[1:])
        try:
            self._group = parallel.ProcessGroup(self.graph, self.dtype, capacity, len(blocks) - 1)
        except OSError as e:
            self.processes_failed = f"cannot start worker processes: {e}"

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._group is not None:
            self._group.close()
            self._group = None

    def _processes(self, parts: list[slice]) -> parallel.ProcessGroup | None:
        """The process group, if it is ready for these parts (never waits for it)."""
        group = self._group
        if group is None or len(parts) - 1 != group.children:
            return None
        if max(p.stop - p.start for p in parts[1:]) > group.capacity:
            return None
        try:
            return group if group.ready() else None
        except parallel.WorkerLost as e:
            self._lost(e)
            return None

    def _lost(self, e: Exception) -> None:
        self.processes_failed = str(e)
        self.close()

    def _in_parts(self, parts: list[slice], task) -> list[Any]:
        """task(network, part) for each part, each on a worker thread (one Numba thread each)."""
        nets = [self] + [self._replica(i) for i in range(1, len(parts))]
        # The caller only waits: switching its own Numba thread count per call
        # costs a process-wide lock that the workers' kernels contend for too.
        futures = [threads.pool().submit(task, net, part) for net, part in zip(nets, parts)]
        return [f.result() for f in futures]

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """x (N, *input) → the main output (N, *output). While training, auxiliary heads run too."""
        parts = self._parts(x.shape[0]) if self.workers > 1 else None
        if parts is None:
            return self._forward(x, train)
        x = self._check_input(x)
        self._in_parts(parts, lambda net, part: net._forward(x[part], train))
        self.values = _MergedValues([self.values] + [r.values for r in self._replicas[:len(parts) - 1]])
        return self.values[self.graph.output]

    def _forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        values = {"input": self._check_input(x)}
        order = self.graph.nodes if train else self.infer_order
        for node in order:
            if node.name in self.fused_inner:
                chain = self.fused_head.get(node.name)
                if chain is not None:
                    outs = chain.forward([values[i] for i in node.inputs])
                    values.update(zip(chain.nodes[1:], outs))
                continue
            values[node.name] = self.layers[node.name].forward([values[i] for i in node.inputs], train)
        self.values = values
        return values[self.graph.output]

    def loss_and_backward(self, x: np.ndarray, target: np.ndarray, loss: Loss,
                          train: bool = True, keep_node_grads: bool = False) -> tuple[float, np.ndarray]:
        """Forward, loss (main + weighted auxiliary outputs when training), backward.

        Returns (loss, main output). Parameter gradients land in ``self.grads``;
        with ``keep_node_grads`` every node's ∂E/∂output in ``self.node_grads``.
        A fast network without batch statistics or dropout splits a batch into
        one block per core (:meth:`_blocks`), on threads or, after
        :meth:`spawn_workers`, in worker processes; node values are then not kept.
        """
        if not self.splits or keep_node_grads or len(target) != len(x):
            return self._loss_and_backward(x, target, loss, train, keep_node_grads)
        n = len(x)
        blocks = self._blocks(n)
        if len(blocks) == 1:
            return self._loss_and_backward(x, target, loss, train, False)
        x = self._check_input(x)
        group = self._processes(blocks)
        results = None
        if group is not None:
            results = self._loss_and_backward_processes(group, x, target, loss, train, blocks)
        if results is None:
            done = self._in_parts(blocks, lambda net, b: net._loss_and_backward(x[b], target[b], loss, train,
                                                                                 False))
            nets = [self] + self._replicas[:len(blocks) - 1]
            results = [(lv, out, net.grads) for (lv, out), net in zip(done, nets)]
        self.values = {}  # the parts' values are gone (some in other processes)
        return self._combine(blocks, n, results)

    def _loss_and_backward_processes(self, group, x, target, loss, train, blocks):
        """The first block here, the others in the worker processes: [(loss, output, grads)] or None."""
        import numba

        try:
            group.submit(self.params, [x[b] for b in blocks[1:]], [target[b] for b in blocks[1:]],
                         loss.name, train)
        except parallel.WorkerLost as e:
            self._lost(e)
            return None
        # One Numba thread here too: the other cores run the other blocks.
        threads_before = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            first = self._loss_and_backward(x[blocks[0]], target[blocks[0]], loss, train, False)
        finally:
            numba.set_num_threads(threads_before)
        results = [(first[0], first[1], self.grads)]
        try:
            results += group.collect()
        except parallel.WorkerLost as e:
            self._lost(e)
            for i, b in enumerate(blocks[1:], 1):  # the same blocks, computed here instead
                replica = self._replica(i)
                lv, out = replica._loss_and_backward(x[b], target[b], loss, train, False)
                results.append((lv, out, replica.grads))
        return results

    def _combine(self, parts, n, results) -> tuple[float, np.ndarray]:
        """Loss, output and gradients of a batch from its parts' [(loss, output, grads)], in part order."""
        # Each part's loss is its own mean: weight by the part's share of the batch.
        shares = [(p.stop - p.start) / n for p in parts]
        total = sum(s * lv for s, (lv, _, _) in zip(shares, results))
        grads = {}
        for key in results[0][2]:
            g = results[0][2][key] * self.dtype.type(shares[0])
            for s, (_, _, part_grads) in zip(shares[1:], results[1:]):
                g += part_grads[key] * self.dtype.type(s)
            grads[key] = g
        self.grads = grads
        return total, np.concatenate([out for _, out, _ in results])

    def _loss_and_backward(self, x, target, loss, train, keep_node_grads):
        out = self._forward(x, train)
        heads = {self.graph.output: 1.0, **(self.graph.aux_outputs if train else {})}
        seeds: dict[str, np.ndarray] = {}
        total = 0.0
        for name, weight in heads.items():
            source = loss.source(self.graph, name)
            value = self.values[source]
            if value.ndim != 2:
                raise UsageError(f"the loss needs a flat output (classes), but '{source}' gives "
                                 f"{fmt_shape(value.shape[1:])}")
            _check_target(target, value.shape, source)
            lv, g = loss.fn(value, target)
            total += weight * lv
            seeds[source] = seeds[source] + weight * g if source in seeds else weight * g
        self.backward(seeds, keep_node_grads)
        return total, out

    def predict(self, images: np.ndarray, batch_size: int, source: str | None = None) -> np.ndarray:
        """Inference in batches of ``batch_size``: the output of node ``source`` (default: the main output).

        images (N, *input) → (N, *output of source).
        """
        source = source or self.graph.output
        n = len(images)
        result: np.ndarray | None = None
        for i in range(0, n, batch_size):
            self.forward(images[i:i + batch_size], train=False)
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
        self.node_grads = {}
        for layer in self.layers.values():
            layer.grads = {}
        for node in reversed(self.graph.nodes):
            g = grads.pop(node.name, None)
            if g is None:
                continue
            if keep_node_grads:
                self.node_grads[node.name] = g
            if node.name in self.fused_inner:
                chain = self.fused_tail.get(node.name)
                if chain is None:
                    continue
                node = self.graph[chain.nodes[0]]
                dxs = chain.backward(g)
            else:
                dxs = self.layers[node.name].backward(g)
            for inp, dx in zip(node.inputs, dxs):
                if dx is None:  # not computed: nothing reads it
                    continue
                # Never add in place: a layer may hand the same array to several inputs.
                grads[inp] = grads[inp] + dx if inp in grads else dx
        self.input_grad = grads.get("input")
        self.grads = {}
        for node in self.graph.nodes:
            layer = self.layers[node.name]
            for suffix in node.params:
                if node.trainable:
                    key = f"{node.name}.{suffix}"
                    g = layer.grads.get(suffix)
                    self.grads[key] = np.zeros_like(self.params[key]) if g is None else g


def _check_target(target: np.ndarray, out_shape: tuple[int, ...], source: str) -> None:
    n, k = out_shape
    if target.ndim == 1:
        if target.shape[0] != n or (target.size and (target.min() < 0 or target.max() >= k)):
            raise UsageError(f"targets must be {n} class indices in 0..{k - 1} for '{source}'")
    elif target.shape != (n, k):
        raise UsageError(f"target has shape {fmt_shape(target.shape)}; '{source}' gives {n}×{k}")
