"""A batch split into parts, one per core: data parallelism inside one step.

A fast network (:class:`~cnncli.engine.network.Network` with ``fast=True``)
splits a batch into contiguous *parts* (:func:`cnncli.engine.rules.part_count`),
runs each part on a network of its own with one Numba thread and one-thread
BLAS, and averages the parts' gradients in part order. Unlike ``prange``
inside each kernel, the GEMMs run in parallel too, and the cores meet once per
pass instead of after every kernel — and, while training, once per batch-norm
layer in each direction, where the parts exchange their per-sample sums so
that every part normalises with the whole batch's statistics
(:mod:`cnncli.engine.batch`).

Where a part runs:

* *threads* (:meth:`Parts.in_threads`): the first part on the calling thread's
  network, the others on replicas that share its parameter arrays, each on a
  worker thread of :func:`cnncli.engine.threads.pool`. Inference always runs
  this way;
* *processes* (:class:`cnncli.engine.processes.ProcessGroup`), for training
  after :meth:`Parts.spawn_workers`: the first part here, the others in child
  processes with replicas of their own, so that no part waits for another's
  GIL. Until the children have booted, or after one fails, threads take over
  with the same numbers.

Either way a part's numbers do not depend on where it ran, and the parts are
combined in the same fixed order, so a split step is bit-identical from run to
run and between threads and processes. A worker lost in the middle of a step
(while its part waited for the others, say) is not patched up: the running
statistics are put back and the whole step runs again on threads.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Mapping
from threading import BrokenBarrierError
from typing import Any

import numpy as np

from cnncli.engine import processes, rules, threads
from cnncli.engine.batch import Place, ThreadExchange

__all__ = ["Parts", "usable_cores"]


def usable_cores() -> int:
    """Cores a batch may be split across: Numba's thread count, at most the CPUs this process may use."""
    import numba

    try:
        usable = len(os.sched_getaffinity(0))  # taskset, a container's cpuset
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(1, min(numba.config.NUMBA_NUM_THREADS, usable))


class MergedValues(Mapping):
    """The node values of a batch computed in parts: each one joined along the batch on access."""

    def __init__(self, parts: list[dict[str, np.ndarray]]):
        self.parts = parts

    def __getitem__(self, key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in self.parts])

    def __iter__(self):
        return iter(self.parts[0])

    def __len__(self) -> int:
        return len(self.parts[0])


class Parts:
    """How ``net`` splits its batches into at most ``cores`` parts, and the replicas and processes that run them.

    ``net`` runs the first part itself (:meth:`Network.forward_part`,
    :meth:`Network.loss_and_backward_part`); replicas are networks of the same
    class built on its parameter arrays.
    """

    def __init__(self, net, cores: int):
        self.net = net
        self.cores = cores
        self.replicas: list[Any] = []
        self.group: processes.ProcessGroup | None = None
        #: Why parts went back from processes to threads (None: they did not).
        self.processes_failed: str | None = None

    def slices(self, n: int) -> list[slice]:
        """A batch of ``n`` samples as contiguous parts, one per core (of at least MIN_PART samples)."""
        k = rules.part_count(n, self.cores)
        bounds = [n * i // k for i in range(k + 1)]
        return [slice(a, b) for a, b in itertools.pairwise(bounds)]

    def replica(self, i: int):
        """The network that runs part ``i`` (1, 2, ...) on a thread: shares the parameters, buffers and generator."""
        net = self.net
        while len(self.replicas) < i:
            self.replicas.append(type(net)(net.graph, net.dtype, fast=True, params=net.params,
                                           buffers=net.buffers, workers=1))
        return self.replicas[i - 1]

    def places(self, slices: list[slice], draw: int, exchange=None) -> list[Place]:
        """Where each part sits in its batch, the parts sharing ``exchange``."""
        n = slices[-1].stop
        return [Place(s.start, n, s.stop - s.start, draw, self.net.seed, first=i == 0, exchange=exchange)
                for i, s in enumerate(slices)]

    def exchanging(self, train: bool) -> bool:
        """Whether the parts of a pass exchange rows: while training a network with batch norm."""
        return train and bool(self.net.exchanges)

    def thread_places(self, slices: list[slice], draw: int, train: bool) -> list[Place]:
        """:meth:`places` for parts on threads (exchanging through a :class:`ThreadExchange` if need be)."""
        return self.places(slices, draw, ThreadExchange(len(slices)) if self.exchanging(train) else None)

    # -- processes --
    def spawn_workers(self, max_batch: int) -> None:
        """Start child processes for the training batches (up to ``max_batch``) to come.

        They boot in the background; until they are ready (or if they fail),
        parts run on threads. Does nothing unless batches of ``max_batch`` would
        be split, or where processes are not available
        (:func:`cnncli.engine.processes.available`).
        """
        slices = self.slices(max_batch)
        if len(slices) < 2 or self.group is not None or not processes.available():
            return
        capacity = max(s.stop - s.start for s in slices[1:])
        try:
            self.group = processes.ProcessGroup(self.net.graph, self.net.dtype, capacity, len(slices) - 1,
                                                self.net.exchanges)
        except OSError as e:
            self.processes_failed = f"cannot start worker processes: {e}"

    def close(self) -> None:
        """Stop the child processes, if any."""
        if self.group is not None:
            self.group.close()
            self.group = None

    def ready_group(self, slices: list[slice]) -> processes.ProcessGroup | None:
        """The process group, if it is ready for these parts (never waits for it)."""
        group = self.group
        if group is None or len(slices) - 1 != group.children:
            return None
        if max(s.stop - s.start for s in slices[1:]) > group.capacity:
            return None
        try:
            return group if group.ready() else None
        except processes.WorkerLost as e:
            self._lost(e)
            return None

    def _lost(self, e: Exception) -> None:
        self.processes_failed = str(e)
        self.close()

    # -- passes --
    def in_threads(self, slices: list[slice], places: list[Place], task) -> list[Any]:
        """task(network, part, place) for each part, each on a worker thread (one Numba thread each)."""
        nets = [self.net] + [self.replica(i) for i in range(1, len(slices))]
        exchange = places[0].exchange

        def run(net, part, place):
            try:
                return task(net, part, place)
            except BaseException:
                if exchange is not None:
                    exchange.abort()  # the other parts stop waiting for this one
                raise

        # The caller only waits: switching its own Numba thread count per call
        # costs a process-wide lock that the workers' kernels contend for too.
        workers = threads.pool(len(slices))
        futures = [workers.submit(run, *job) for job in zip(nets, slices, places)]
        errors = [f.exception() for f in futures]
        # The first real failure, not the broken barrier it left the other parts with.
        for e in sorted((e for e in errors if e is not None), key=lambda e: isinstance(e, BrokenBarrierError)):
            raise e
        return [f.result() for f in futures]

    def forward(self, x: np.ndarray, slices: list[slice], train: bool, draw: int,
                keep: tuple[str, ...] = ()) -> np.ndarray:
        """The main output of a batch run in parts on threads; ``net.values`` joins the parts' values."""
        self.in_threads(slices, self.thread_places(slices, draw, train),
                        lambda net, part, place: net.forward_part(x[part], train, place, keep))
        nets = [self.net] + self.replicas[:len(slices) - 1]
        self.net.values = MergedValues([net.values for net in nets])
        return self.net.values[self.net.graph.output]

    def loss_and_backward(self, x: np.ndarray, target: np.ndarray, loss, train: bool,
                          slices: list[slice], draw: int) -> tuple[float, np.ndarray]:
        """Loss and output of a batch run in parts, its gradients averaged into ``net.grads``."""
        group = self.ready_group(slices)
        results = None
        if group is not None:
            results = self._in_processes(group, x, target, loss, train, slices, draw)
        if results is None:
            done = self.in_threads(
                slices, self.thread_places(slices, draw, train),
                lambda net, s, place: net.loss_and_backward_part(x[s], target[s], loss, train, place))
            nets = [self.net] + self.replicas[:len(slices) - 1]
            results = [(lv, out, net.grads) for (lv, out), net in zip(done, nets)]
        self.net.values = {}  # the parts' values are gone (some in other processes)
        return self._combine(slices, len(x), results)

    def _in_processes(self, group, x, target, loss, train, slices, draw):
        """The first part here, the others in the child processes: [(loss, output, grads)], or None when a
        worker was lost (the running statistics are then as they were before the step)."""

        net = self.net
        places = self.places(slices, draw)
        saved = {k: v.copy() for k, v in net.buffers.items()} if self.exchanging(train) else {}
        try:
            exchange = group.submit(net.params, [x[s] for s in slices[1:]], [target[s] for s in slices[1:]],
                                    loss.name, train, places[1:], net.buffers)
            if self.exchanging(train):
                places[0] = dataclasses.replace(places[0], exchange=exchange)
            # One Numba thread here too: the other cores run the other parts.
            with threads.numba_threads(1):
                first = net.loss_and_backward_part(x[slices[0]], target[slices[0]], loss, train, places[0])
            return [(first[0], first[1], net.grads)] + group.collect()
        except processes.WorkerLost as e:
            self._lost(e)
            for k, v in saved.items():
                net.buffers[k][...] = v
            return None

    def _combine(self, slices, n, results) -> tuple[float, np.ndarray]:
        """Loss, output and gradients of a batch from its parts' [(loss, output, grads)], in part order."""
        # Each part's loss is its own mean: weight by the part's share of the batch.
        dtype = self.net.dtype
        shares = [(s.stop - s.start) / n for s in slices]
        total = sum(share * lv for share, (lv, _, _) in zip(shares, results))
        grads = {}
        for key in results[0][2]:
            g = results[0][2][key] * dtype.type(shares[0])
            for share, (_, _, part_grads) in zip(shares[1:], results[1:]):
                g += part_grads[key] * dtype.type(share)
            grads[key] = g
        self.net.grads = grads
        return total, np.concatenate([out for _, out, _ in results])
