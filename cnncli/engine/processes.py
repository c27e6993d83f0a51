"""Parts of a training batch in worker processes: replicas of a network in child processes.

On threads of one process (:mod:`cnncli.engine.parts`) the parts of a
LeNet-sized batch wait on each other: every kernel call releases and retakes
the GIL, so the Python between two kernels of one part waits for the other
part's. A child process has an interpreter of its own. A
:class:`ProcessGroup` runs one child per extra core, each with a replica of the
network (one Numba thread, one-thread BLAS; :mod:`cnncli.engine.worker` is the
child's side) and a block of shared memory holding

* the parameters and buffers, copied in by the parent before every step (the
  parent's own arrays stay where they are, so the optimizer, checkpoints and
  ``load_state_dict`` never see shared memory; a child reads the running
  statistics of a frozen batch norm, and never writes any: the parent's part
  updates them);
* per child (its *slot*): control words, its part of the batch and its
  targets, its loss, outputs and parameter gradients;
* the tables through which the parts exchange per-sample rows while training
  (batch norm's sums, :mod:`cnncli.engine.batch`), with a word per table and
  part that says which step's rows the part has put there
  (:class:`ProcessExchange`).

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

__all__ = ["ProcessExchange", "ProcessGroup", "Slot", "StepAbandoned", "WorkerLost", "available", "child_slot",
           "map_shared", "shared_layout", "views", "wait"]

_ALIGN = 64  # bytes: every array starts on a cache line



class WorkerLost(RuntimeError):
    """A child process failed to start, answered with an error, or died."""


class StepAbandoned(RuntimeError):
    """In a child: the parent gave up the step whose exchange the child waits in (it failed or moved on)."""


# A child's control words (int64, in shared memory). The parent writes a
# step's inputs, then GO; the child writes its results, then DONE = GO. x86-64
# keeps stores in program order, so whoever sees the flag sees what was
# written before it (processes are used on x86-64 only; see available()).
# START, TOTAL, DRAW and SEED place the child's part in its batch (cnncli.engine.batch.Place).
GO, DONE, N, TARGET_KIND, LOSS, TRAIN, FAILED, START, TOTAL, DRAW, SEED = range(11)
_CTRL_WORDS = 16
LABELS, SOFT = 0, 1

#: The losses a child can run, by index (control word LOSS).
LOSS_NAMES = tuple(sorted(losses.LOSSES))


def available() -> bool:
    """Whether batches may go to worker processes here: x86-64 (see the control words) with POSIX fds."""
    return platform.machine().lower() in ("x86_64", "amd64") and os.name == "posix"


def shared_layout(graph, dtype: np.dtype, capacity: int, children: int,
                  tables: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, tuple[int, ...], str]]:
    """Offsets, shapes and dtypes of the shared arrays, computed alike by parent and children.

    ``param.<key>`` for every parameter, ``buffer.<key>`` for every buffer; for child i: ``<i>.ctrl`` (control
    words), ``<i>.loss``, ``<i>.x``, ``<i>.labels`` and ``<i>.soft`` (class
    indices or target vectors), ``<i>.out`` and ``<i>.grad.<key>`` (trainable
    parameters only); for each exchanged table (``tables``: key → one sample's
    rows' shape, :func:`cnncli.engine.network.exchanges`) ``table.<key>``
    with room for every part's samples, and ``arrived`` (tables × parts).
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
    for key, shape in graph.buffer_shapes().items():
        add(f"buffer.{key}", tuple(shape))
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
    for key, shape in tables.items():
        add(f"table.{key}", (capacity * (children + 1), *shape), np.float64)
    add("arrived", (max(len(tables), 1), children + 1), np.int64)
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


class ProcessExchange:
    """Part ``party``'s side of the exchange tables in shared memory, for step ``stamp``.

    :meth:`share` writes the part's rows into the table, then its word in
    ``arrived`` (x86-64 stores: whoever sees the word sees the rows), and
    spins until every part's word shows this step. ``alive()`` turning False
    while waiting ends the wait with ``broken()``, an exception to raise.
    """

    def __init__(self, tables: dict[str, np.ndarray], arrived: np.ndarray, party: int, stamp: int, alive, broken):
        self.tables = tables  # key -> table, in the order of arrived's rows (exchange_tables)
        self.order = {key: i for i, key in enumerate(tables)}
        self.arrived = arrived
        self.party, self.stamp = party, stamp
        self.alive, self.broken = alive, broken

    def share(self, key: str, start: int, rows: np.ndarray, total: int) -> np.ndarray:
        table = self.tables[key]
        table[start:start + len(rows)] = rows
        arrived = self.arrived[self.order[key]]
        stamp = self.stamp
        arrived[self.party] = stamp  # last: the others read the rows once they see this
        if not wait(lambda: bool((arrived == stamp).all()), self.alive):
            raise self.broken()
        return table[:total]


class ProcessGroup:
    """``children`` child processes, each holding a replica of ``graph`` for parts of up to ``capacity`` samples.

    ``tables``: the rows the parts exchange while training (see :func:`shared_layout`).
    """

    def __init__(self, graph, dtype, capacity: int, children: int, tables: Mapping[str, tuple[int, ...]]):
        self.dtype = np.dtype(dtype)
        self.capacity = capacity
        self.children = children
        self.step = 0
        layout = shared_layout(graph, self.dtype, capacity, children, tables)
        self.fd = _shared_file(layout[""][0])
        self.arrays = map_shared(self.fd, layout)
        self.params = views(self.arrays, "param.")
        self.buffers = views(self.arrays, "buffer.")
        self.slots = [child_slot(self.arrays, i) for i in range(children)]
        self.tables = views(self.arrays, "table.")
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
               loss: str, train: bool, places: list,
               buffers: Mapping[str, np.ndarray] | None = None) -> ProcessExchange:
        """Start child i on ``parts[i]`` (at most ``capacity`` samples, at ``places[i]`` of the batch) with the
        current ``params`` and ``buffers``; the parent's side of this step's exchange."""
        for key, arr in params.items():
            np.copyto(self.params[key], arr)
        for key, arr in (buffers or {}).items():
            np.copyto(self.buffers[key], arr)
        self._pending = []
        self.step += 1
        for i, (x, target, place) in enumerate(zip(parts, targets, places)):
            n = len(x)
            slot = self.slots[i]
            ctrl = slot.ctrl
            ctrl[START], ctrl[TOTAL], ctrl[DRAW], ctrl[SEED] = place.start, place.total, place.draw, place.seed
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
            ctrl[GO] = self.step  # last: the child starts once it sees this
            self._pending.append(i)
        return ProcessExchange(self.tables, self.arrays["arrived"], 0, self.step, self._children_alive, self._failure)

    def _children_alive(self) -> bool:
        """While the parent waits in an exchange: no child died or failed this step."""
        return all(p.poll() is None for p in self.procs) and not any(
            s.ctrl[FAILED] and s.ctrl[DONE] == self.step for s in self.slots)

    def _failure(self) -> WorkerLost:
        for i, slot in enumerate(self.slots):
            if self.procs[i].poll() is not None:
                return self._lost(i)
            if slot.ctrl[FAILED] and slot.ctrl[DONE] == self.step:
                try:
                    self._message(i)
                except WorkerLost as e:
                    return e
        return WorkerLost("a worker process stopped answering")

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
