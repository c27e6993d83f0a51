"""A worker process's side of :mod:`cnncli.engine.processes`: a replica that runs parts until told to stop.

The parent starts ``python -c "... from cnncli.engine.worker import serve; serve()"``
with a socket and the shared memory's file descriptor as arguments
(:class:`cnncli.engine.processes.ProcessGroup`). The child builds its replica
of the network on the shared parameter arrays, says it is ready, then waits
for each step's GO word, runs its part (one Numba thread, one-thread BLAS) and
writes its loss, outputs and gradients before setting DONE.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection

import numpy as np

from cnncli.engine import losses
from cnncli.engine.batch import Place
from cnncli.engine.network import Network, exchanges
from cnncli.engine.processes import (
    DONE,
    DRAW,
    FAILED,
    GO,
    LOSS,
    LOSS_NAMES,
    SEED,
    START,
    TARGET_KIND,
    TOTAL,
    TRAIN,
    N,
    ProcessExchange,
    StepAbandoned,
    child_slot,
    map_shared,
    shared_layout,
    views,
    wait,
)

__all__ = ["serve"]


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
        dtype = np.dtype(dtype)
        arrays = map_shared(fd, shared_layout(graph, dtype, capacity, children, exchanges(graph)))
        net = Network(graph, dtype, fast=True, params=views(arrays, "param."), workers=1,
                      buffers=views(arrays, "buffer."))
        slot = child_slot(arrays, index)
        tables, arrived = views(arrays, "table."), arrays["arrived"]
    except Exception as e:  # noqa: BLE001 (reported to the parent, which falls back to threads)
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    ctrl = slot.ctrl
    targets = (slot.labels, slot.soft)
    step = int(ctrl[GO])
    closed = False

    def parent_gone() -> bool:
        nonlocal closed
        # The socket turns readable (EOF) when the parent closes it or dies.
        closed = closed or conn.poll(0)
        return closed

    def abandoned() -> StepAbandoned:
        return StepAbandoned()

    while True:
        if not wait(lambda last=step: ctrl[GO] != last, lambda: not parent_gone()):
            return
        step = int(ctrl[GO])
        n = int(ctrl[N])
        # While waiting in an exchange: the parent must be alive and still on this step.
        exchange = ProcessExchange(tables, arrived, index + 1, step,
                                   lambda s=step: ctrl[GO] == s and not parent_gone(), abandoned)
        place = Place(int(ctrl[START]), int(ctrl[TOTAL]), n, int(ctrl[DRAW]), int(ctrl[SEED]), first=False,
                      exchange=exchange)
        try:
            loss = losses.get(LOSS_NAMES[int(ctrl[LOSS])]).bound(net.graph)
            lv, result = net.loss_and_backward_part(slot.x[:n], targets[int(ctrl[TARGET_KIND])][:n], loss,
                                                    bool(ctrl[TRAIN]), place)
            slot.loss[0] = lv
            slot.out[:n] = result
            for key, g in slot.grads.items():
                np.copyto(g, net.grads[key])
            ctrl[FAILED] = 0
        except StepAbandoned:
            continue  # the parent has moved on (or is gone): no results for this step
        except Exception as e:  # noqa: BLE001
            ctrl[FAILED] = 1
            try:
                conn.send(("error", f"{type(e).__name__}: {e}"))
            except OSError:
                return
        ctrl[DONE] = step  # last: the parent reads the results once it sees this
