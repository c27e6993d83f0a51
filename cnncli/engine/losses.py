"""Loss functions: value and gradient with respect to the network's output.

Every loss is averaged over the batch (PyTorch's ``reduction='mean'``) and
summed over a sample's outputs. Targets are class indices ``(N,)`` or
explicit target vectors ``(N, K)``; a detection head's are arrays shaped as its
output (:func:`cnncli.engine.yolo.encode`).

A loss that needs its head's settings (``yolo``: boxes, anchors, the terms'
weights) reads them from the graph: :meth:`Loss.bound` gives the loss of one
network, which training, evaluation and the worker processes all ask for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cnncli.engine.elementwise import softmax
from cnncli.engine.heads import HEADS
from cnncli.errors import UsageError
from cnncli.model.spec import LOSS_ALIASES

# Keeps ln() finite when a probability reaches exactly 0 or 1 in float32.
_TINY = 1e-12


def one_hot(target: np.ndarray, k: int, dtype) -> np.ndarray:
    """Class indices (N,) → one-hot (N, K); target vectors pass through."""
    if target.ndim == 2:
        return target.astype(dtype, copy=False)
    y = np.zeros((target.shape[0], k), dtype=dtype)
    y[np.arange(target.shape[0]), target] = 1
    return y


def softmax_cross_entropy(logits: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Cross-entropy of softmax(logits), fused: stable through log-sum-exp, gradient (p − y)/N.

    logits (N, K); target (N,) or (N, K) → (loss, ∂loss/∂logits (N, K)).
    """
    n, k = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    y = one_hot(target, k, logits.dtype)
    log_p = z - np.log(s)
    loss = float(-(y * log_p).sum() / n)
    # ∂/∂z of −Σ y·log softmax(z) is p·Σy − y: (p − y) for one-hot targets, right for soft ones too.
    return loss, (e / s * y.sum(axis=1, keepdims=True) - y) / n


def cross_entropy(p: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """−Σ y·ln p for outputs that are already probabilities. p (N, K) → (loss, ∂loss/∂p)."""
    n, k = p.shape
    y = one_hot(target, k, p.dtype)
    q = np.maximum(p, _TINY)
    return float(-(y * np.log(q)).sum() / n), -y / q / n


def binary_cross_entropy(o: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """The lecture's per-output binary cross-entropy −Σ[y·ln o + (1−y)·ln(1−o)] (slide 8).

    o (N, K) in (0, 1) → (loss, ∂loss/∂o = −(y/o − (1−y)/(1−o))/N).
    """
    n, k = o.shape
    y = one_hot(target, k, o.dtype)
    q = np.clip(o, _TINY, 1 - _TINY)
    loss = float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).sum() / n)
    return loss, -(y / q - (1 - y) / (1 - q)) / n


def half_squared_error(o: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """½Σ(y − o)². o (N, K) → (loss, ∂loss/∂o = (o − y)/N)."""
    n, k = o.shape
    y = one_hot(target, k, o.dtype)
    d = o - y
    return float(0.5 * (d * d).sum() / n), d / n


@dataclass(frozen=True)
class Loss:
    """A loss by name. ``fuses_softmax``: applied to the logits in front of a final softmax.

    ``head``: the layer kind whose output the loss reads (None: a flat output of classes) and ``binds``, which
    makes the loss's function from that layer (the graph's node) when :meth:`bound` to a network.
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]
    fuses_softmax: bool = False
    head: str | None = None
    binds: Callable | None = None

    def bound(self, graph) -> Loss:
        """This loss for the network ``graph``: with its head's settings when it reads a head's."""
        if self.binds is None:
            return self
        node = graph[graph.output]
        if node.kind != self.head:
            raise UsageError(f"the {self.name} loss reads a {self.head} layer's output, but the model's output "
                             f"'{node.name}' is a {node.kind} layer")
        return dataclasses.replace(self, fn=self.binds(node), binds=None)

    def source(self, graph, head: str | None = None) -> str:
        """The node whose output this loss reads for the output ``head`` of ``graph`` (default: the main one).

        The logits in front of a final softmax when the loss fuses it, else the
        head itself. Training, evaluation, the trace and the network all ask here.
        """
        node = graph[graph.output if head is None else head]
        return node.inputs[0] if self.fuses_softmax and node.kind == "softmax" else node.name

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) from what this loss reads (N, K): softmax of logits, else the outputs as they are."""
        return softmax(outputs) if self.fuses_softmax else outputs


def _unbound(out: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    raise TypeError("this loss reads its head's settings: use Loss.bound(graph)")


def _head_loss(module) -> Callable:
    """The loss of a detection head module (:mod:`cnncli.engine.yolo`, :mod:`cnncli.engine.localize`) bound to a
    graph's node of its kind."""
    def bind(node) -> Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]:
        head = module.Head.of(node)

        def fn(out: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
            value, grad, _ = module.loss(out, target, head)
            return value, grad

        return fn

    return bind


LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss("cross_entropy", softmax_cross_entropy, fuses_softmax=True),
    "bce": Loss("bce", binary_cross_entropy),
    "mse": Loss("mse", half_squared_error),
    **{kind: Loss(kind, _unbound, head=kind, binds=_head_loss(module)) for kind, module in HEADS.items()},
}

#: Command-line spellings (the one list: cnncli.model.spec).
ALIASES = LOSS_ALIASES


def get(name: str) -> Loss:
    return LOSSES[ALIASES.get(name, name)]
