"""The localize head: one object an image, its class and its box (single-object localization, the simplest case of
detection, before grids of boxes: the lecture's "object localization").

**Layout.** A ``localize`` layer passes on the flat output ``t`` (N, C + 4) of the layer before it (a dense layer):
``C`` class scores, then four numbers of the box, ``(tx, ty, tw, th)``.

**Decoding**: the box's centre and size as fractions of the input, ``(cx, cy, w, h) = σ(tx, ty, tw, th)`` (to pixels
by the input's width W and height H); class probabilities q = softmax of the scores; the box's score is the
probability of its class, max q.

**Target** (:func:`encode`): an image's one object as ``C + 4`` numbers, its class one-hot and its box's
``(cx, cy, w, h)`` as fractions of the input; an image with no object or more than one is a DataError (such data
wants a yolo head).

**Loss** of an image (summed; the batch's is the mean over images, as every cnncli loss)::

    cls · −Σ_c ŷ_c ln q_c                      the cross-entropy of the class scores
  + box · Σ (σ(t_box) − b̂)²                   the squared error of the box's four numbers (a regression loss)

with the weights the head's options (``cls: 1``, ``box: 5``, the yolo head's coordinate weight). :func:`loss` gives
the value, the gradient with respect to the head's input and each term; ``tests/test_localize.py`` checks the
gradient against finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncli.engine.boxes import Boxes
from cnncli.engine.elementwise import log_softmax, sigmoid, softmax
from cnncli.errors import DataError
from cnncli.model.graph import output_classes

__all__ = ["Head", "Terms", "TERMS", "decode", "encode", "loss"]

#: The loss's terms, in the order tables show them.
TERMS = ("cls", "box")
#: It finds exactly one object an image (a dataset's images must each hold one).
ONE_OBJECT = True


@dataclass(frozen=True)
class Head:
    """A localize head's settings: ``classes`` (C) and the loss's weights."""

    classes: int
    box: float = 5.0
    cls: float = 1.0

    @classmethod
    def of(cls, node) -> Head:
        """The head a graph's ``localize`` node (:class:`cnncli.model.graph.Node`) describes."""
        return cls(output_classes(node), node.options["box"], node.options["cls"])


@dataclass(frozen=True)
class Terms:
    """A batch's loss by term, each a mean over images."""

    cls: float
    box: float

    @property
    def total(self) -> float:
        return self.cls + self.box

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in TERMS}


def encode(boxes: Boxes, head: Head, size: tuple[int, int], dtype=np.float32) -> tuple[np.ndarray, int]:
    """The target (N, C + 4) of a batch whose images hold one object each, xyxy pixels of an input of ``size``
    (H, W); (target, 0): nothing is dropped."""
    counts = boxes.counts
    if len(counts) and (counts.min() != 1 or counts.max() != 1):
        i = int(np.flatnonzero(counts != 1)[0])
        raise DataError(f"a localize head finds one object an image, but image {i} of the batch has "
                        f"{int(counts[i])}: train a yolo head on images of several objects")
    height, width = size
    xyxy = boxes.xyxy.astype(np.float64)
    target = np.zeros((len(boxes), head.classes + 4), dtype=dtype)
    target[np.arange(len(boxes)), boxes.classes] = 1
    target[:, head.classes:] = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / width, (xyxy[:, 1] + xyxy[:, 3]) / 2 / height,
                                         (xyxy[:, 2] - xyxy[:, 0]) / width, (xyxy[:, 3] - xyxy[:, 1]) / height], axis=1)
    return target, 0


def loss(t: np.ndarray, target: np.ndarray, head: Head) -> tuple[float, np.ndarray, Terms]:
    """The localize loss of ``t`` (N, C + 4) against :func:`encode`'s ``target``: (value, ∂/∂t of t's shape and dtype,
    the value by term)."""
    n = len(t)
    c = head.classes
    log_q = log_softmax(t[:, :c].astype(np.float64))
    y = target[:, :c].astype(np.float64)
    b = sigmoid(t[:, c:].astype(np.float64))
    d = b - target[:, c:]
    cls = -head.cls * np.sum(y * log_q)
    box = head.box * np.sum(d * d)
    grad = np.concatenate([head.cls * (np.exp(log_q) * y.sum(axis=1, keepdims=True) - y),
                           2 * head.box * d * b * (1 - b)], axis=1) / max(n, 1)
    terms = Terms(float(cls) / max(n, 1), float(box) / max(n, 1))
    return terms.total, grad.astype(t.dtype, copy=False), terms


def decode(t: np.ndarray, head: Head, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image's one box: xyxy pixels of an input of ``size`` (H, W), (N, 1, 4); its class's probability (N, 1);
    its class (N, 1)."""
    height, width = size
    q = softmax(t[:, :head.classes].astype(np.float64))
    cx, cy, w, h = sigmoid(t[:, head.classes:].astype(np.float64)).T
    xyxy = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], axis=1)
    xyxy = np.clip(xyxy, 0, [width, height, width, height])
    return xyxy[:, None], q.max(axis=1)[:, None], q.argmax(axis=1)[:, None]
