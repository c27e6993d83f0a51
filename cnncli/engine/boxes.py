"""Boxes: the labelled rectangles of detection, one ragged record for many images.

The one vocabulary of boxes, used by the data (YOLO folders, ``mnist-detect``), the detection loss, non-maximum
suppression and mAP:

* a box is ``(x0, y0, x1, y1)`` in **pixels** of the image it belongs to, x to the right and y down, corners
  ``x0 <= x1``, ``y0 <= y1`` (PyTorch's ``xyxy``, torchvision's ``boxes`` convention); the image's top-left pixel
  covers ``[0, 1) × [0, 1)``, so a box of the whole ``W × H`` image is ``(0, 0, W, H)``;
* the YOLO label format's ``(cx, cy, w, h)`` normalised to [0, 1] is converted at the edges
  (:func:`from_yolo`, :func:`to_yolo`) and nowhere else;
* :class:`Boxes` holds the boxes of ``N`` images as flat arrays and offsets, indexed like a label array
  (``boxes[idx]`` is the boxes of the images ``idx``), so a dataset's labels can be boxes wherever it can be
  class indices;
* :func:`iou` and :func:`nms` are the geometry every user of boxes shares: intersection over union in pixels
  (no ``+ 1``, as torchvision and pycocotools), and greedy non-maximum suppression with torchvision's rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Boxes", "from_yolo", "iou", "nms", "to_yolo"]


@dataclass(frozen=True)
class Boxes:
    """The boxes of ``N`` images: image ``i``'s are rows ``offsets[i]:offsets[i + 1]``.

    ``xyxy`` float32 (M, 4) in pixels (module docstring); ``classes`` int64 (M,); ``offsets`` int64 (N + 1,),
    starting at 0 and never decreasing. An image may have no boxes.
    """

    xyxy: np.ndarray
    classes: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        xyxy = np.ascontiguousarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        classes = np.ascontiguousarray(self.classes, dtype=np.int64).reshape(-1)
        offsets = np.ascontiguousarray(self.offsets, dtype=np.int64).reshape(-1)
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(xyxy) or len(classes) != len(xyxy) \
                or np.any(np.diff(offsets) < 0):
            raise ValueError(f"Boxes: offsets {offsets[:5]}... do not cut {len(xyxy)} boxes and {len(classes)} "
                             "classes into images")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "offsets", offsets)

    @classmethod
    def of_images(cls, images: Sequence[tuple[np.ndarray, np.ndarray]]) -> Boxes:
        """From one ``(xyxy (m, 4), classes (m,))`` pair per image."""
        counts = [len(c) for _, c in images]
        offsets = np.zeros(len(images) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        xyxy = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b, _ in images]) if images \
            else np.zeros((0, 4), np.float32)
        classes = np.concatenate([np.asarray(c, np.int64).reshape(-1) for _, c in images]) if images \
            else np.zeros(0, np.int64)
        return cls(xyxy, classes, offsets)

    @classmethod
    def empty(cls, n: int) -> Boxes:
        """``n`` images without boxes."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(n + 1, np.int64))

    def __len__(self) -> int:
        """The number of images (as ``len`` of a label array)."""
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        """Boxes per image, int64 (N,)."""
        return np.diff(self.offsets)

    def image(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i``'s boxes (m, 4) and classes (m,) (views)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.xyxy[a:b], self.classes[a:b]

    def __getitem__(self, idx) -> Boxes:
        """The boxes of the images ``idx`` (an index array, a boolean mask or a slice), in that order."""
        picked = np.arange(len(self))[idx]
        if np.ndim(picked) == 0:
            raise TypeError("Boxes[i] with one index: use .image(i) for one image's boxes")
        starts, ends = self.offsets[picked], self.offsets[picked + 1]
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) if len(picked) else \
            np.zeros(0, np.int64)
        offsets = np.zeros(len(picked) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        return Boxes(self.xyxy[rows], self.classes[rows], offsets)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Boxes):
            return NotImplemented
        return (np.array_equal(self.offsets, other.offsets) and np.array_equal(self.classes, other.classes)
                and np.array_equal(self.xyxy, other.xyxy))

    __hash__ = None  # type: ignore[assignment]


def from_yolo(cxcywh: np.ndarray, width: float, height: float) -> np.ndarray:
    """YOLO label boxes ``(cx, cy, w, h)`` normalised to [0, 1], (m, 4) → ``xyxy`` pixels of a ``width × height`` image."""
    b = np.asarray(cxcywh, dtype=np.float64).reshape(-1, 4)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out = np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], axis=1)
    return (out * np.array([width, height, width, height])).astype(np.float32)


def to_yolo(xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """``xyxy`` pixels of a ``width × height`` image, (m, 4) → YOLO's normalised ``(cx, cy, w, h)``."""
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4) / np.array([width, height, width, height])
    out = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    return out.astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (m, 4) with every box of ``b`` (k, 4), both ``xyxy``: (m, k) float64.

    Computed in float64 whatever the inputs, in the order pycocotools' ``bbIou`` uses (widths from the corners,
    ``union = area_a + area_b - intersection``), so that an IoU compared with a threshold falls on the same side
    as there. A pair that does not overlap, or whose union is empty (two zero-area boxes), has IoU 0, not NaN;
    an inverted box (``x1 < x0``) overlaps nothing.
    """
    a = _xyxy(a, "a")
    b = _xyxy(b, "b")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    overlaps = (w > 0) & (h > 0)
    inter = np.where(overlaps, w * h, 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    # Overlapping boxes have a union at least their intersection > 0; elsewhere the IoU stays 0.
    np.divide(inter, union, out=out, where=overlaps)
    return out


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None,
        max_boxes: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: the indices (int64, (n,)) of the boxes kept, by decreasing score.

    ``xyxy`` (M, 4) and ``scores`` (M,) of one image. Boxes are visited by decreasing score, ties in index order
    (a stable sort); a visited box that is not suppressed is kept and suppresses every later box whose IoU with
    it (:func:`iou`) is ``> iou_threshold`` (torchvision.ops.nms's rule: a box exactly at the threshold
    survives). With ``classes`` (M,) a box suppresses only boxes of its own class, as
    torchvision.ops.batched_nms; the kept indices of all classes together are still in score order.
    ``max_boxes`` keeps only the first that many (the per-image cap detectors apply). NaN scores sort last.

    Each kept box costs one vectorised IoU against the boxes of its class still in play: a few thousand boxes
    take a fraction of a second.
    """
    boxes = _xyxy(xyxy, "xyxy")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"nms: {len(scores)} scores for {len(boxes)} boxes")
    if max_boxes is not None and max_boxes < 0:
        raise ValueError(f"nms: max_boxes {max_boxes} is negative")
    cap = len(boxes) if max_boxes is None else int(max_boxes)
    order = np.argsort(-scores, kind="stable")
    if classes is None:
        return _greedy(boxes, order, iou_threshold, cap)
    classes = np.asarray(classes).reshape(-1)
    if len(classes) != len(boxes):
        raise ValueError(f"nms: {len(classes)} classes for {len(boxes)} boxes")
    # Classes do not interact, so each is suppressed alone (small arrays, so cheap steps); the survivors are
    # then put back in the one score order, where the first ``cap`` are what a joint pass would keep.
    ordered = classes[order]
    kept = [_greedy(boxes, order[ordered == c], iou_threshold, cap) for c in np.unique(ordered)]
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return kept[np.argsort(rank[kept])][:cap]


def _greedy(boxes: np.ndarray, order: np.ndarray, iou_threshold: float, cap: int) -> np.ndarray:
    """The greedy pass of :func:`nms` over the boxes ``order`` (indices into ``boxes`` (M, 4), visiting order)."""
    x0, y0, x1, y1 = (np.ascontiguousarray(boxes[order, j]) for j in range(4))
    area = (x1 - x0) * (y1 - y0)
    remaining = np.arange(len(order))
    keep: list[int] = []
    while len(remaining) and len(keep) < cap:
        i, rest = remaining[0], remaining[1:]
        keep.append(int(order[i]))
        # :func:`iou` of box i with the rest, the same operations in the same order (so the same bits).
        w = np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest])
        h = np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest])
        overlaps = (w > 0) & (h > 0)
        inter = np.where(overlaps, w * h, 0.0)
        ratio = np.zeros_like(inter)
        np.divide(inter, area[i] + area[rest] - inter, out=ratio, where=overlaps)
        remaining = rest[~(ratio > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def _xyxy(boxes: np.ndarray, name: str) -> np.ndarray:
    """``boxes`` as float64 (m, 4), or a ValueError naming the argument."""
    out = np.asarray(boxes, dtype=np.float64)
    if out.ndim != 2 or out.shape[1] != 4:
        raise ValueError(f"{name}: boxes must have shape (m, 4), got {out.shape}")
    return out
