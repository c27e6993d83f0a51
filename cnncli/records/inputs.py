"""How a dataset's images become a model's input: adaptation, augmentation, normalisation.

A dataset gives uint8 images ``(N, C, H, W)``; a model takes ``(C', H', W')``.
:func:`plan` decides, once, how one becomes the other, and says so in words
for the run's header and its config (:meth:`InputPlan.describe`):

* **size**: the same; or a centred zero border when the model's input is
  larger (MNIST's 28×28 in a 32×32 CIFAR network: 2 pixels each side); or a
  centre crop when it is smaller. Only small changes are made this way (the
  border or the crop at most a quarter of the image's side): a 28×28 digit is
  never blown up to 224×224, which would need resizing that changes what the
  lecture's networks see.
* **channels**: the same; or a grey image replicated into the three channels
  of a colour network. A colour image is never turned grey.

Anything else is a :class:`~cnncli.errors.UsageError` naming the dataset, the
model and the rule.

Training batches may then be **augmented** (:class:`Augmentation`, the CIFAR
recipe): a random crop after a zero border of ``crop_padding`` pixels, and a
horizontal flip of half the images. The offsets and flips of an epoch are drawn
for every training image from a generator seeded with ``(seed, epoch)``, by the
image's index, so they do not depend on the batch size, on how a batch is split
across cores, or on where a run was interrupted: a resumed run sees the same
images as an uninterrupted one.

Last, pixels are **normalised** with the dataset's per-channel statistics
(:func:`cnncli.data.normalise`), before grey channels are replicated. Images
stay uint8 until a batch is made, so a dataset costs one byte per pixel in
memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnncli.engine.boxes import Boxes
from cnncli.engine.jit import kernel
from cnncli.errors import UsageError
from cnncli.model.graph import Node, output_classes

__all__ = ["Augmentation", "Draws", "InputPlan", "check_outputs", "plan"]

Shape3 = tuple[int, int, int]

#: The largest border or crop, as a share of the image's side, that adaptation makes.
MAX_ADAPT_SHARE = 0.25


def _fmt(shape) -> str:
    return "×".join(str(d) for d in shape)


@dataclass(frozen=True)
class Draws:
    """One epoch's augmentation draws for every training image, by index: crop offsets and flips."""

    dy: np.ndarray    # (N,) int64 in [0, 2p]
    dx: np.ndarray    # (N,) int64 in [0, 2p]
    flip: np.ndarray  # (N,) bool


@dataclass(frozen=True)
class Augmentation:
    """Random crop after a zero border of ``crop_padding`` pixels, and a horizontal flip of half the images."""

    crop_padding: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise UsageError(f"--crop-padding must be a whole number of pixels, at least 0, got {self.crop_padding!r}")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def describe(self) -> str:
        parts = []
        if self.crop_padding:
            parts.append(f"random crop after a {self.crop_padding}-pixel border")
        if self.flip:
            parts.append("horizontal flip of half the images")
        return ", ".join(parts) if parts else "none"

    def draws(self, seed: int, epoch: int, n: int) -> Draws:
        """The draws of epoch ``epoch`` (0-based) for ``n`` training images; the same for the same arguments."""
        rng = np.random.default_rng([seed, epoch, 0xA5])
        span = 2 * self.crop_padding + 1
        dy = rng.integers(0, span, size=n) if self.crop_padding else np.full(n, 0, np.int64)
        dx = rng.integers(0, span, size=n) if self.crop_padding else np.full(n, 0, np.int64)
        flip = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
        return Draws(dy.astype(np.int64), dx.astype(np.int64), flip)

    def apply(self, images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray) -> np.ndarray:
        """images uint8 (n, C, H, W), with one draw each → augmented uint8 (n, C, H, W)."""
        out = np.empty_like(images)
        _crop_flip(np.ascontiguousarray(images), out, np.ascontiguousarray(dy, dtype=np.int64),
                   np.ascontiguousarray(dx, dtype=np.int64), np.ascontiguousarray(flip, dtype=np.bool_),
                   self.crop_padding)
        return out


@kernel
def _crop_flip(src, out, dy, dx, flip, p):
    # out[i] = the H×W window at (dy, dx) of src[i] bordered by p zeros, mirrored left-right where flip[i]:
    # the border is never built, a source cell outside the image reads as 0.
    n, c, h, w = out.shape
    zero = out.dtype.type(0)
    for i in range(n):
        oy = dy[i] - p
        ox = dx[i] - p
        for ch in range(c):
            for r in range(h):
                sr = r + oy
                row = out[i, ch, r]
                if sr < 0 or sr >= h:
                    row[:] = zero
                    continue
                srow = src[i, ch, sr]
                for col in range(w):
                    sc = (w - 1 - col if flip[i] else col) + ox
                    row[col] = srow[sc] if 0 <= sc < w else zero


@dataclass(frozen=True)
class InputPlan:
    """How images of ``source`` (C, H, W) become inputs of ``target`` (C', H', W'); see the module docstring.

    ``border`` (top, bottom, left, right) pixels of zeros are added, or
    ``crop`` (top, left) is the corner of the centred window kept.
    """

    dataset: str
    source: Shape3
    target: Shape3
    border: tuple[int, int, int, int] = (0, 0, 0, 0)
    crop: tuple[int, int] | None = None
    replicate: bool = False
    augmentation: Augmentation = Augmentation()

    @property
    def identity(self) -> bool:
        return self.source == self.target

    def describe(self) -> str:
        """The adaptation in words, for the run's header (``as is`` when there is none)."""
        words = []
        (_, h, w), (tc, th, tw) = self.source, self.target
        if (h, w) != (th, tw):
            if self.crop is None:
                words.append(f"{h}×{w} padded to {th}×{tw} with zeros")
            else:
                words.append(f"{h}×{w} centre-cropped to {th}×{tw}")
        if self.replicate:
            words.append(f"grey replicated into {tc} channels")
        return ", ".join(words) if words else "as is"

    def to_config(self) -> dict[str, Any]:
        return {"dataset_shape": list(self.source), "model_shape": list(self.target),
                "adaptation": self.describe(), "crop_padding": self.augmentation.crop_padding,
                "flip": self.augmentation.flip}

    def adapt(self, images: np.ndarray) -> np.ndarray:
        """uint8 (n, C, H, W) → uint8 (n, C, H', W'): the border or the crop (channels come later)."""
        if self.crop is not None:
            top, left = self.crop
            return images[:, :, top:top + self.target[1], left:left + self.target[2]]
        if any(self.border):
            t, b, le, r = self.border
            return np.pad(images, ((0, 0), (0, 0), (t, b), (le, r)))
        return images

    def batch(self, images: np.ndarray, dtype, normalise, draws: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        """uint8 (n, C, H, W) → the model's float input (n, C', H', W').

        ``normalise(uint8 images, dtype) -> float images`` applies the dataset's
        statistics; ``draws`` (dy, dx, flip) per image augment a training batch.
        """
        x = self.adapt(images)
        if draws is not None and self.augmentation.active:
            x = self.augmentation.apply(x, *draws)
        x = normalise(np.ascontiguousarray(x), dtype)
        if self.replicate:
            x = np.repeat(x, self.target[0], axis=1)
        return x

    def boxes(self, boxes: Boxes, draws: tuple[np.ndarray, ...] | None = None) -> Boxes:
        """Boxes of the dataset's images (xyxy pixels, :mod:`cnncli.engine.boxes`) → where :meth:`batch` puts their
        pixels: moved by the border or the crop, then by each image's draw (dy, dx, flip), clipped to the input.

        A box left with less than :data:`KEEP_SHARE` of its area inside the input, or under
        :data:`MIN_SIDE` pixels wide or high, is dropped: what is left of the object is too little to find.
        """
        xyxy = boxes.xyxy.astype(np.float64)
        if self.crop is not None:
            top, left = self.crop
            xyxy -= (left, top, left, top)
        else:
            top, _, left, _ = self.border
            xyxy += (left, top, left, top)
        _, height, width = self.target
        if draws is not None and self.augmentation.active:
            dy, dx, flip = draws
            p = self.augmentation.crop_padding
            image = np.repeat(np.arange(len(boxes)), boxes.counts)
            # Augmentation.apply: out[r, c] = in[r + dy - p, c + dx - p], then column c mirrored to width - 1 - c,
            # so a pixel edge x goes to x - (dx - p), and mirrored to width - x.
            oy, ox = (dy[image] - p).astype(np.float64), (dx[image] - p).astype(np.float64)
            xyxy -= np.stack([ox, oy, ox, oy], axis=1)
            mirrored = flip[image].astype(bool)
            xyxy[mirrored] = np.stack([width - xyxy[mirrored, 2], xyxy[mirrored, 1],
                                       width - xyxy[mirrored, 0], xyxy[mirrored, 3]], axis=1)
        area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
        clipped = np.clip(xyxy, 0, (width, height, width, height))
        w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (w >= MIN_SIDE) & (h >= MIN_SIDE) & (w * h >= KEEP_SHARE * area)
        counts = np.bincount(np.repeat(np.arange(len(boxes)), boxes.counts)[keep], minlength=len(boxes))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return Boxes(clipped[keep], boxes.classes[keep], offsets)

    def preparer(self, dtype, normalise):
        """:meth:`batch` without augmentation, as a function of a batch of uint8 images (for inference)."""
        return lambda images: self.batch(images, dtype, normalise)


def _axis(size: int, want: int, what: str, dataset: str, model: str) -> tuple[int, int, bool]:
    """(before, after, crop) for one spatial axis; UsageError when the change is too large."""
    if size == want:
        return 0, 0, False
    change = abs(want - size)
    if change > MAX_ADAPT_SHARE * size * 2:
        verb = "pad" if want > size else "crop"
        raise UsageError(
            f"{dataset} images are {size} pixels {what} but model '{model}' takes {want}: cnncli would have to "
            f"{verb} {change} pixels, more than a quarter of the image on each side; resizing is not done "
            f"(give the model an input of {size} pixels {what}, or use a dataset closer to its size)")
    before = change // 2
    return before, change - before, want < size


def plan(dataset: str, source: Shape3, target: tuple[int, ...], model: str,
         augmentation: Augmentation | None = None) -> InputPlan:
    """How ``dataset``'s images (``source``, C×H×W) become the input of ``model`` (``target``).

    ``target`` must be an image shape (C, H, W). Raises :class:`UsageError`
    for a combination that cannot be adapted (see the module docstring).
    """
    augmentation = augmentation or Augmentation()
    if len(target) != 3:
        raise UsageError(f"model '{model}' takes {_fmt(target)} inputs, not images (C×H×W): it cannot be "
                         f"trained on {dataset}")
    (c, h, w), (tc, th, tw) = tuple(source), tuple(target)
    if tc != c and not (c == 1 and tc == 3):
        raise UsageError(
            f"model '{model}' takes {tc}-channel inputs but {dataset} images have {c}: cnncli only replicates "
            "a grey channel into three (give the model an input of "
            f"[{c}, {th}, {tw}])")
    top, bottom, crop_h = _axis(h, th, "high", dataset, model)
    left, right, crop_w = _axis(w, tw, "wide", dataset, model)
    if crop_h != crop_w and (top or bottom) and (left or right):
        raise UsageError(f"{dataset} images are {h}×{w} but model '{model}' takes {th}×{tw}: one side would "
                         "be padded and the other cropped; give the model a square input closer to the images")
    crop = (top, left) if (crop_h or crop_w) else None
    border = (0, 0, 0, 0) if crop is not None else (top, bottom, left, right)
    p = augmentation.crop_padding
    if p > min(th, tw) // 2:
        raise UsageError(f"--crop-padding {p} is more than half the model's {th}×{tw} input")
    return InputPlan(dataset, (c, h, w), (tc, th, tw), border, crop, tc != c, augmentation)


#: A box moved partly out of the input (:meth:`InputPlan.boxes`) is kept when this share of its area is left ...
KEEP_SHARE = 0.25
#: ... and it is at least this many pixels wide and high.
MIN_SIDE = 2.0


def check_outputs(output: Node, classes: int, dataset: str, model: str) -> None:
    """A model of ``dataset`` must score each of its classes (:func:`cnncli.model.graph.output_classes`: a
    classifier's units, a detection head's class channels); else :class:`UsageError`."""
    scored = output_classes(output)
    if scored == classes:
        return
    if output.kind == "localize":
        raise UsageError(f"model '{model}' scores {scored} classes in its localize head ({output.out_shape[0]} "
                         f"numbers: one a class, then 4 of the box), but {dataset} has {classes} classes: the "
                         f"layer before the head needs {classes + 4} units")
    if output.kind == "yolo":
        boxes = output.options["boxes"]
        raise UsageError(f"model '{model}' scores {scored} classes in its yolo head ({output.out_shape[0]} channels: "
                         f"5 a box for {boxes} boxes, then one a class), but {dataset} has {classes} classes: the "
                         f"layer before the head needs {5 * boxes + classes} filters")
    raise UsageError(f"model '{model}' outputs {_fmt(output.out_shape)}, but {dataset} has {classes} classes: "
                     f"the last layer needs {classes} units")

