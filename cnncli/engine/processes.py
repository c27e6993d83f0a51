"""Parts of a training batch in worker processes: replicas of a network in child processes.

On threads of one process (:mod:`cnncli.engine.parts`) the parts of a
LeNet-sized batch wait on each other: every kernel call releases and retakes
the GIL, so the Python between two kernels of one part waits for the other
part's. A child process has an interpreter of its own. A
:class:`ProcessGroup` runs one child per extra core, each with a replica of the
network (one Numba thread, one-thread BLAS; :mod:`cnncli.engine.worker` is the
child's side) and a block of shared memory holding

* the parameters, copied in by the parent before every step (the parent's own
  arrays stay where they are, so the optimizer, checkpoints and
  ``load_state_dict`` never see shared memory);
* per child (its *slot*): control words, its part of the batch and its
  targets, its loss, outputs and parameter gradients.

Per step the parent writes each child's part and sets its GO word, computes
its own part meanwhile, and then waits for each child's DONE word, spinning
first (:func:`wait`): a message through a socket, or waking a sleeping
process, costs more than the parent's own work between two steps on a
virtual machine. :class:`~cnncli.engine.parts.Parts` combines the parts in the
same fixed order as parts run on threads, so the numbers do not depend on
where a part ran.

Children boot in the background (importing Numba and loading the cached
kernels): until they are ready the parent keeps using threads, so a short run
never waits for them. A child ignores SIGINT and SIGTERM, which the parent
handles (it saves its checkpoint), and exits when its socket closes, which is
also what happens when the parent is killed. A child that fails to start,
fails or dies is reported by raising :class:`WorkerLost`; the parts then go
back to threads. Processes are used on x86-64 only (:func:`available`), whose
stores become visible in program order, which the control words rely on.
"""

from __future__ import annotations

import math
import mmap
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from cnncli.engine import losses, rules

__all__ = ["ProcessGroup", "Slot", "WorkerLost", "available", "child_slot", "map_shared", "shared_layout", "views", "wait"]

_ALIGN = 64  # bytes: every array starts on a cache line



class WorkerLost(RuntimeError):
    """A child process failed to start, answered with an error, or died."""


# A child's control words (int64, in shared memory). The parent writes a
# step's inputs, then GO; the child writes its results, then DONE = GO. x86-64
# keeps stores in program order, so whoever sees the flag sees what was
# written before it (processes are used on x86-64 only; see available()).
GO, DONE, N, TARGET_KIND, LOSS, TRAIN, FAILED = range(7)
_CTRL_WORDS = 8
LABELS, SOFT = 0, 1

#: The losses a child can run, by index (control word LOSS).
LOSS_NAMES = tuple(sorted(losses.LOSSES))


def available() -> bool:
    """Whether batches may go to worker processes here: x86-64 (see the control words) with POSIX fds."""
    return platform.machine().lower() in ("x86_64", "amd64") and os.name == "posix"


def shared_layout(graph, dtype: np.dtype, capacity: int, children: int) -> dict[str, tuple[int, tuple[int, ...], str]]:
    """Offsets, shapes and dtypes of the shared arrays, computed alike by parent and children.

    ``param.<key>`` for every parameter; for child i: ``<i>.ctrl`` (control
    words), ``<i>.loss``, ``<i>.x``, ``<i>.labels`` and ``<i>.soft`` (class
    indices or target vectors), ``<i>.out`` and ``<i>.grad.<key>`` (trainable
    parameters only).
    """
    entries: dict[str, tuple[int, tuple[int, ...], str]] = {}
    offset = 0

    def add(name: str, shape: tuple[int, ...], kind: np.dtype = dtype) -> None:
        nonlocal offset
        entries[name] = (offset, shape, np.dtype(kind).str)
        offset += -(-math.prod(shape) * np.dtype(kind).itemsize // _ALIGN) * _ALIGN

    shapes = graph.param_shapes()
    for key, shape in shapes.items():
        add(f"param.{key}", tuple(shape))
    trainable = [f"{n.name}.{s}" for n in graph.nodes if n.trainable for s in n.params]
    for i in range(children):
        add(f"{i}.ctrl", (_CTRL_WORDS,), np.int64)
        add(f"{i}.loss", (1,), np.float64)
        add(f"{i}.x", (capacity, *graph.input_shape))
        add(f"{i}.labels", (capacity,), np.int64)
        add(f"{i}.soft", (capacity, *graph.output_shape))
        add(f"{i}.out", (capacity, *graph.output_shape))
        for key in trainable:
            add(f"{i}.grad.{key}", tuple(shapes[key]))
    entries[""] = (offset, (), "")  # the total size
    return entries


def map_shared(fd: int, layout) -> dict[str, np.ndarray]:
    buf = mmap.mmap(fd, max(layout[""][0], 1))  # shared, read-write; keeps its own reference to the file
    return {name: np.ndarray(shape, dtype=kind, buffer=buf, offset=off)
            for name, (off, shape, kind) in layout.items() if name}


def views(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


@dataclass
class Slot:
    """Child i's arrays in the shared block, as both sides see them."""

    ctrl: np.ndarray
    loss: np.ndarray
    x: np.ndarray
    labels: np.ndarray
    soft: np.ndarray
    out: np.ndarray
    grads: dict[str, np.ndarray]


def child_slot(arrays: dict[str, np.ndarray], i: int) -> Slot:
    return Slot(arrays[f"{i}.ctrl"], arrays[f"{i}.loss"], arrays[f"{i}.x"], arrays[f"{i}.labels"],
                 arrays[f"{i}.soft"], arrays[f"{i}.out"], views(arrays, f"{i}.grad."))


def _shared_file(size: int) -> int:
    """A file descriptor of ``size`` zero bytes of memory that a child can map; it has no name to leak."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("cnncli-replicas")
    else:  # other POSIX systems: an unlinked temporary file
        with tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, max(size, 1))
    return fd


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
        layout = shared_layout(graph, self.dtype, capacity, children)
        self.fd = _shared_file(layout[""][0])
        self.arrays = map_shared(self.fd, layout)
        self.params = views(self.arrays, "param.")
        self.slots = [child_slot(self.arrays, i) for i in range(children)]
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self._ready = [False] * children
        self._pending: list[int] = []
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns, self.fd)
        # The child imports this very copy of cnncli, whatever the working
        # directory holds (`python -c` puts it first on sys.path).
        package_parent = str(Path(__file__).resolve().parents[2])
        code = f"import sys; sys.path.insert(0, {package_parent!r}); from cnncli.engine.worker import serve; serve()"
        env = dict(os.environ, NUMBA_NUM_THREADS="1")
        for i in range(children):
            mine, theirs = socket.socketpair()
            with theirs:
                proc = subprocess.Popen(
                    [sys.executable, "-c", code, str(theirs.fileno()), str(self.fd)],
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
                self._message(i)
                self._ready[i] = True
        return True

    def _message(self, i: int):
        try:
            kind, value = self.conns[i].recv()
        except (EOFError, OSError):
            raise self._lost(i) from None
        if kind == "error":
            raise WorkerLost(f"worker process {i + 1}: {value}")
        return value

    def _lost(self, i: int) -> WorkerLost:
        return WorkerLost(f"worker process {i + 1} died (status {self.procs[i].poll()})")

    def submit(self, params: Mapping[str, np.ndarray], parts: list[np.ndarray], targets: list[np.ndarray],
               loss: str, train: bool) -> None:
        """Start child i on ``parts[i]`` (at most ``capacity`` samples) with the current ``params``."""
        for key, arr in params.items():
            np.copyto(self.params[key], arr)
        self._pending = []
        for i, (x, target) in enumerate(zip(parts, targets)):
            n = len(x)
            slot = self.slots[i]
            ctrl = slot.ctrl
            np.copyto(slot.x[:n], x)
            if target.ndim == 1:
                np.copyto(slot.labels[:n], target)
                ctrl[TARGET_KIND] = LABELS
            else:
                np.copyto(slot.soft[:n], target)
                ctrl[TARGET_KIND] = SOFT
            ctrl[N] = n
            ctrl[LOSS] = LOSS_NAMES.index(loss)
            ctrl[TRAIN] = int(train)
            ctrl[GO] += 1  # last: the child starts once it sees this
            self._pending.append(i)

    def collect(self) -> list[tuple[float, np.ndarray, dict[str, np.ndarray]]]:
        """Wait for the submitted parts: (loss, outputs, gradients) of each, as views of shared memory."""
        results = []
        pending, self._pending = self._pending, []
        for i in pending:
            slot = self.slots[i]
            ctrl = slot.ctrl
            proc = self.procs[i]
            if not wait(lambda c=ctrl: c[DONE] == c[GO], lambda p=proc: p.poll() is None):
                raise self._lost(i)
            if ctrl[FAILED]:
                self._message(i)  # raises, with the child's error
            n = int(ctrl[N])
            results.append((float(slot.loss[0]), slot.out[:n], slot.grads))
        return results

    def close(self) -> None:
        """Stop the children and release the shared memory (also done when the group is collected)."""
        self._finalizer()


def wait(done, alive) -> bool:
    """Wait until done(): spin for rules.SPIN_SECONDS, then check every 0.2-2 ms. False if alive() turns False first.

    Parent and children hand each other work every few milliseconds; a process
    that went to sleep is slow to wake on a virtual machine (an idle vCPU is
    halted), and a message through a socket costs the sender as much.
    """
    start = time.perf_counter()
    while not done():
        waited = time.perf_counter() - start
        if waited > rules.SPIN_SECONDS:
            if not alive():
                return done()
            # A long wait (validation, a checkpoint) needs no fast wake-up.
            time.sleep(0.0002 if waited < 0.05 else 0.002)
    return True
