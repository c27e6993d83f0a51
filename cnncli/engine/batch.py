"""Where a part sits in its batch: what batch norm and dropout need from the rest of the batch.

A batch split into parts (:mod:`cnncli.engine.parts`) must give the numbers
the whole batch gives. Two layer kinds look beyond their own sample:

* **batch norm** normalises with statistics of the whole batch: each part
  computes per-row sums of its own samples (:mod:`cnncli.engine.norm`), hands
  them to the others through an *exchange*, and every part combines all the
  rows in batch order, so each gets the same bits as the unsplit batch;
* **dropout** draws its mask per sample from (seed, layer, pass, sample index in
  the batch) (:mod:`cnncli.engine.draws`), so a sample's mask does not depend on
  which part it ran in.

A :class:`Place` tells a layer where its part sits; layers that need one say
so by which rows they exchange (``Layer.exchanges``). An exchange is a barrier
with a table: :class:`ThreadExchange` for parts on threads,
:class:`cnncli.engine.processes.ProcessExchange` for parts in worker processes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Exchange", "Place", "ThreadExchange", "whole"]


class Exchange(Protocol):
    def share(self, key: str, start: int, rows: np.ndarray, total: int) -> np.ndarray:
        """Put this part's ``rows`` at ``start`` of table ``key``; wait for every part; the ``total`` rows of all."""


@dataclass(frozen=True)
class Place:
    """Samples ``start``… of a batch of ``total``, in training pass ``draw`` of a network seeded ``seed``.

    ``exchange`` is None when the part is the whole batch. ``first``: the part
    that updates shared state (batch norm's running statistics) for the batch.
    """

    start: int
    total: int
    size: int
    draw: int
    seed: int
    first: bool = True
    exchange: Exchange | None = None

    @property
    def weight(self) -> float:
        """The part's share of the batch: its loss is a mean over its own samples, the batch's over all."""
        return self.size / self.total

    def gather(self, key: str, rows: np.ndarray) -> np.ndarray:
        """This part's per-sample ``rows`` (size, ...) → the whole batch's (total, ...), in batch order."""
        if self.exchange is None:
            return rows
        return self.exchange.share(key, self.start, rows, self.total)


def whole(n: int, draw: int, seed: int) -> Place:
    """The place of an unsplit batch of ``n`` samples."""
    return Place(0, n, n, draw, seed)


class ThreadExchange:
    """An exchange between ``parties`` parts running on threads of one process.

    Every part must call :meth:`share` for the same keys in the same order
    (the layers of one network do). A part that fails calls :meth:`abort`,
    so the others stop waiting (they raise ``threading.BrokenBarrierError``).
    """

    def __init__(self, parties: int):
        self.barrier = threading.Barrier(parties)
        self.tables: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()

    def share(self, key: str, start: int, rows: np.ndarray, total: int) -> np.ndarray:
        with self.lock:
            table = self.tables.get(key)
            if table is None or table.shape != (total, *rows.shape[1:]) or table.dtype != rows.dtype:
                table = self.tables[key] = np.empty((total, *rows.shape[1:]), dtype=rows.dtype)
        table[start:start + len(rows)] = rows
        self.barrier.wait()
        return table

    def abort(self) -> None:
        self.barrier.abort()
