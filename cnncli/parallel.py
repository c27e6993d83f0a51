"""Data parallelism across processes: replicas of a network in child processes.

A fast network splits a training batch into one part per core. On threads of
one process (:meth:`cnncli.network.Network.loss_and_backward`'s default) the
parts lose 20-40 % on LeNet-5-sized networks: every kernel call releases and
retakes the GIL, so the Python between two kernels of one part waits for the
other part's. A child process has an interpreter of its own. A
:class:`ProcessGroup` runs one child per extra core, each with a replica of the
network (one Numba thread, one-thread BLAS) and a block of shared memory
holding

* the parameters, copied in by the parent before every step (the parent's own
  arrays stay where they are, so the optimizer, checkpoints and
  ``load_state_dict`` never see shared memory);
* per child: its part of the batch, its outputs and its parameter gradients.

Per step the parent writes each child's part, sends it the targets over a
socket, computes its own part meanwhile and then collects the children's
losses and gradients; :class:`~cnncli.network.Network` averages them in the
same fixed order as parts run on threads, so the numbers do not depend on
where a part ran.

Children boot in the background (importing Numba and loading the cached
kernels takes about a second): until they are ready the parent keeps using
threads, so a short run never waits for them. A child ignores SIGINT and
SIGTERM, which the parent handles (it saves its checkpoint), and exits when
its socket closes, which is also what happens when the parent is killed. A
child that fails to start or dies is reported by :meth:`ProcessGroup.ready`
raising :class:`WorkerLost`; the network then goes back to threads.
"""

from __future__ import annotations

import math
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

__all__ = ["ProcessGroup", "WorkerLost", "serve"]

_ALIGN = 64  # bytes: every array starts on a cache line

#: How long a process polls for its next message before it blocks (see _wait).
SPIN_SECONDS = 0.005


class WorkerLost(RuntimeError):
    """A child process failed to start, answered with an error, or died."""


def _layout(graph, dtype: np.dtype, capacity: int, children: int) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Offsets and shapes of the shared arrays, computed alike by parent and children.

    ``param.<key>`` for every parameter; ``<i>.x``, ``<i>.out`` and
    ``<i>.grad.<key>`` (trainable parameters only) for child i.
    """
    item = dtype.itemsize
    entries: dict[str, tuple[int, tuple[int, ...]]] = {}
    offset = 0

    def add(name: str, shape: tuple[int, ...]) -> None:
        nonlocal offset
        entries[name] = (offset, shape)
        offset += -(-math.prod(shape) * item // _ALIGN) * _ALIGN

    for key, shape in graph.param_shapes().items():
        add(f"param.{key}", tuple(shape))
    trainable = [f"{n.name}.{s}" for n in graph.nodes if n.trainable for s in n.params]
    shapes = graph.param_shapes()
    for i in range(children):
        add(f"{i}.x", (capacity, *graph.input_shape))
        add(f"{i}.out", (capacity, *graph.output_shape))
        for key in trainable:
            add(f"{i}.grad.{key}", tuple(shapes[key]))
    entries[""] = (offset, ())  # the total size
    return entries


def _map(fd: int, layout, dtype: np.dtype) -> dict[str, np.ndarray]:
    buf = mmap.mmap(fd, max(layout[""][0], 1))  # shared, read-write; keeps its own reference to the file
    return {name: np.ndarray(shape, dtype=dtype, buffer=buf, offset=off)
            for name, (off, shape) in layout.items() if name}


def _shared_file(size: int) -> int:
    """A file descriptor of ``size`` zero bytes of memory that a child can map; it has no name to leak."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("cnncli-replicas")
    else:  # other POSIX systems: an unlinked temporary file
        with tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, max(size, 1))
    return fd


def _wait(conn: Connection) -> None:
    """Poll ``conn`` for up to SPIN_SECONDS before a blocking read would sleep.

    Parent and children hand each other work every few milliseconds; a
    process that sleeps in between takes ~0.1 ms to wake on a virtual machine
    (an idle vCPU is halted), twice per step.
    """
    end = time.perf_counter() + SPIN_SECONDS
    while not conn.poll(0) and time.perf_counter() < end:
        pass


def _stop(procs: list[subprocess.Popen], conns: list[Connection], fd: int | None) -> None:
    for conn in conns:
        conn.close()
    for proc in procs:
        # A child holds nothing worth saving: the parameters and the run are the parent's.
        proc.kill()
        proc.wait()
    if fd is not None:
        os.close(fd)


class ProcessGroup:
    """``children`` child processes, each holding a replica of ``graph`` for parts of up to ``capacity`` samples."""

    def __init__(self, graph, dtype, capacity: int, children: int):
        self.dtype = np.dtype(dtype)
        self.capacity = capacity
        self.children = children
        layout = _layout(graph, self.dtype, capacity, children)
        self.fd = _shared_file(layout[""][0])
        self.arrays = _map(self.fd, layout, self.dtype)
        self.params = {k[len("param."):]: v for k, v in self.arrays.items() if k.startswith("param.")}
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self._ready = [False] * children
        self._pending: list[int] = []
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns, self.fd)
        package_parent = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, NUMBA_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        for i in range(children):
            mine, theirs = socket.socketpair()
            with theirs:
                proc = subprocess.Popen(
                    [sys.executable, "-c", "from cnncli.parallel import serve; serve()",
                     str(theirs.fileno()), str(self.fd)],
                    pass_fds=(theirs.fileno(), self.fd), env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            conn = Connection(mine.detach())
            self.procs.append(proc)
            self.conns.append(conn)
            conn.send((graph, self.dtype.str, capacity, children, i))

    def ready(self) -> bool:
        """True once every child has built its replica; never waits. Raises WorkerLost if one failed."""
        for i, conn in enumerate(self.conns):
            if not self._ready[i]:
                if not conn.poll(0):
                    if self.procs[i].poll() is not None:
                        raise WorkerLost(f"worker process {i + 1} exited while starting "
                                         f"(status {self.procs[i].returncode})")
                    return False
                self._answer(i)
                self._ready[i] = True
        return True

    def _answer(self, i: int):
        try:
            _wait(self.conns[i])
            kind, value = self.conns[i].recv()
        except (EOFError, OSError):
            raise WorkerLost(f"worker process {i + 1} died (status {self.procs[i].poll()})") from None
        if kind == "error":
            raise WorkerLost(f"worker process {i + 1}: {value}")
        return value

    def submit(self, params: Mapping[str, np.ndarray], parts: list[np.ndarray], targets: list[np.ndarray],
               loss: str, train: bool) -> None:
        """Start child i on ``parts[i]`` (at most ``capacity`` samples) with the current ``params``."""
        for key, arr in params.items():
            np.copyto(self.params[key], arr)
        self._pending = []
        for i, (x, target) in enumerate(zip(parts, targets)):
            n = len(x)
            np.copyto(self.arrays[f"{i}.x"][:n], x)
            try:
                self.conns[i].send((n, target, loss, train))
            except OSError:
                raise WorkerLost(f"worker process {i + 1} died (status {self.procs[i].poll()})") from None
            self._pending.append(i)

    def collect(self) -> list[tuple[float, np.ndarray, dict[str, np.ndarray]]]:
        """Wait for the submitted parts: (loss, outputs, gradients) of each, as views of shared memory."""
        results = []
        pending, self._pending = self._pending, []
        for i in pending:
            loss, n = self._answer(i)
            grads = {k[len(f"{i}.grad."):]: v for k, v in self.arrays.items() if k.startswith(f"{i}.grad.")}
            results.append((loss, self.arrays[f"{i}.out"][:n], grads))
        return results

    def close(self) -> None:
        """Stop the children and release the shared memory (also done when the group is collected)."""
        self._finalizer()


def serve() -> None:
    """A child's life (run as ``python -c``): build the replica, then run parts until the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    fd = int(sys.argv[2])
    try:
        graph, dtype, capacity, children, index = conn.recv()
    except EOFError:
        return
    try:
        from cnncli import losses
        from cnncli.network import Network

        dtype = np.dtype(dtype)
        arrays = _map(fd, _layout(graph, dtype, capacity, children), dtype)
        params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
        net = Network(graph, dtype, fast=True, params=params, workers=1)
        x, out = arrays[f"{index}.x"], arrays[f"{index}.out"]
        prefix = f"{index}.grad."
        grads = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    except Exception as e:  # noqa: BLE001 (reported to the parent, which falls back to threads)
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            _wait(conn)
            n, target, loss, train = conn.recv()
        except (EOFError, OSError):
            return
        try:
            value, result = net._loss_and_backward(x[:n], target, losses.get(loss), train, False)
            out[:n] = result
            for key, g in grads.items():
                np.copyto(g, net.grads[key])
            answer = ("done", (value, n))
        except Exception as e:  # noqa: BLE001
            answer = ("error", f"{type(e).__name__}: {e}")
        try:
            conn.send(answer)
        except OSError:
            return
