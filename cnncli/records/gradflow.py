"""Gradient flow: how strongly each layer is learning, epoch by epoch (the lecture's slide 40).

After every backward pass of training, before the optimizer's step, each
parametrised layer (all of its trainable arrays together, e.g. a convolution's
weight and bias) gives

* ``grad_norm`` g = ‖∂E/∂W‖, the loss's own gradient (weight decay not added);
* ``update_ratio`` lr·g / ‖W‖: how far a plain gradient step at this learning
  rate would move the layer, relative to its size (~1e-3 is the usual healthy
  value; a layer far below it barely learns).

An epoch's row holds the means of both over the epoch's steps, and
``weight_norm`` ‖W‖ after its last step. The sums are float64 and part of the
checkpoint, so a resumed run writes the same ``gradients.csv`` as an
uninterrupted one. In a deep plain network the first layers' gradient norms
are orders of magnitude below the last ones'; residual connections keep them
level (``cnncli plot RUN --gradients`` draws it).

Cost: two dot products per parameter array per step (~2·P flops, P the
parameter count), against the ~6·MACs of the step itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Layer:
    """A parametrised layer: its node name, kind and the keys of its trainable arrays."""

    name: str
    kind: str
    keys: tuple[str, ...]


def _round(value: float) -> float | None:
    # The CSV's precision, applied when the row is made: a resumed run's rows come from the
    # checkpoint (JSON) and an uninterrupted run's from memory, and both must print the same.
    return float(f"{value:.6g}") if math.isfinite(value) else None


class GradientFlow:
    """Accumulates per-layer gradient statistics over an epoch's steps; ``history`` holds the finished rows."""

    def __init__(self, layers: list[Layer]):
        self.layers = layers
        self.history: list[dict[str, Any]] = []
        self._reset()

    @classmethod
    def of(cls, net) -> GradientFlow:
        """The trainable layers of a :class:`~cnncli.engine.network.Network`, in network order."""
        return cls([Layer(n.name, n.kind, tuple(f"{n.name}.{k}" for k in n.params))
                    for n in net.graph.nodes if n.trainable and n.params])

    def _reset(self) -> None:
        self.steps = 0
        self.grad_sums = [0.0] * len(self.layers)
        self.ratio_sums = [0.0] * len(self.layers)

    @staticmethod
    def _norm(arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> float:
        total = 0.0
        for key in keys:
            flat = arrays[key].reshape(-1)
            total += float(np.dot(flat, flat))
        return math.sqrt(total)

    def add(self, grads: dict[str, np.ndarray], params: dict[str, np.ndarray], lr: float) -> None:
        """One step: ``grads`` (∂E/∂W by parameter key) and ``params`` before the update."""
        for i, layer in enumerate(self.layers):
            g = self._norm(grads, layer.keys)
            w = self._norm(params, layer.keys)
            self.grad_sums[i] += g
            self.ratio_sums[i] += lr * g / w if w > 0 else math.inf
        self.steps += 1

    def end_epoch(self, epoch: int, params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Close epoch ``epoch`` (1-based): its rows, also appended to ``history``."""
        n = max(self.steps, 1)
        rows = [{"epoch": epoch, "layer": layer.name, "kind": layer.kind,
                 "grad_norm": _round(self.grad_sums[i] / n), "update_ratio": _round(self.ratio_sums[i] / n),
                 "weight_norm": _round(self._norm(params, layer.keys))}
                for i, layer in enumerate(self.layers)]
        self.history.extend(rows)
        self._reset()
        return rows

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON values): the finished rows and the unfinished epoch's sums."""
        return {"history": list(self.history), "steps": self.steps,
                "grad_sums": list(self.grad_sums), "ratio_sums": list(self.ratio_sums)}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from :meth:`state` (None: a checkpoint written before gradient flow was recorded)."""
        if state is None:
            return
        grad_sums, ratio_sums = list(map(float, state["grad_sums"])), list(map(float, state["ratio_sums"]))
        if len(grad_sums) != len(self.layers) or len(ratio_sums) != len(self.layers):
            raise ValueError(f"gradient sums for {len(grad_sums)} layers, the model has {len(self.layers)}")
        self.history = [dict(row) for row in state["history"]]
        self.steps = int(state["steps"])
        self.grad_sums, self.ratio_sums = grad_sums, ratio_sums
