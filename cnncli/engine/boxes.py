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
  class indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Boxes", "from_yolo", "to_yolo"]


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
