"""``mnist-detect``: a detection dataset drawn from MNIST, 1 to 4 real digits on a black canvas, each with its box.

Each canvas is a grey uint8 ``size × size`` image (background 0, MNIST's digits white on black) holding 1 to 4
digits, each one a real MNIST image resized and pasted at a random place; its labels are a
:class:`~cnncli.engine.boxes.Boxes` record: one box per digit, ``xyxy`` in pixels of the canvas, the class the
digit (the base dataset's label, so the class names are the base dataset's, :func:`classes`). Fashion-MNIST
(``base="fashion-mnist"``) works the same way, with clothes instead of digits.

How one canvas is drawn (:func:`generate`)
------------------------------------------

1. its number of digits, uniform in ``digits`` (1 to 4);
2. for each digit, a source image (uniform over the sources, with replacement) and a side: the source's frame
   (28 × 28) is resized to ``side × side``, the side uniform in whole pixels between ``sides[0] × size`` and
   ``sides[1] × size`` (rounded; 24 to 56 on the default 96 canvas);
3. for each digit in turn, a position: the resized frame lies wholly inside the canvas, its top-left corner
   uniform over the places that allow. The digit's box is the tight box of its **non-zero pixels** after resizing
   (not the frame), moved to that place. The position is accepted when this box overlaps each box already on the
   canvas by **less than** ``max_overlap`` (0.3) **of the smaller box's area** (intersection / smaller area, which
   bounds the IoU too and also refuses a small digit inside a larger one's box); otherwise another position is
   drawn, at most ``tries`` (20) in all, and a digit that finds no place in ``tries`` is left out. The first digit
   always has its place, so a canvas holds at least one digit;
4. each digit is pasted by the maximum (``canvas = max(canvas, digit)``: strokes that meet stay white).

Resizing is Pillow's bilinear filter in numpy (:func:`resize`): a triangle filter of pixel centres, widened when
shrinking so that every source pixel counts. A digit is never shrunk to less than half its side, and every source
must have a pixel of at least ``MIN_INK``: together they make every resized digit non-blank (each source pixel
keeps more than 1/17 of its value in some output pixel), so every digit has a box.

A box ``(x0, y0, x1, y1)`` counts pixel edges (:mod:`cnncli.engine.boxes`): a digit whose non-zero pixels are the
columns ``a..b`` and rows ``c..d`` of the canvas has the box ``(a, c, b + 1, d + 1)``.

Determinism
-----------

Everything random comes from one bit generator, ``numpy.random.PCG64(numpy.random.SeedSequence(seed))``, whose
raw stream numpy keeps the same across versions (unlike the methods of ``Generator``): each draw is one raw 64-bit
word ``w``, the uniform ``u = (w >> 11) × 2⁻⁵³`` in [0, 1) (what ``Generator.random`` computes today), drawn in
this order: the canvases' digit numbers ``(count,)``, their sources ``(count, 4)``, their sides ``(count, 4)``,
then for digit slot 0, 1, 2, 3 in turn the positions ``(count, tries, 2)`` (x then y), each block row-major; a draw
``u`` becomes the whole number ``min(floor(u × k), k - 1)`` of ``k`` choices. Every canvas consumes the same
draws whatever it holds, and the pixel arithmetic is elementwise in a fixed order (no matrix products, whose
summation order depends on the BLAS library), so the same sources, ``count``, ``size``, seed and options give the
same arrays on any machine. :func:`load` seeds with ``(seed, 0)``
for ``train`` and ``(seed, 1)`` for ``test``.

The splits and the cache
------------------------

:func:`load` builds ``train`` canvases from MNIST's training images only and ``test`` canvases from its test
images only, so no test digit was ever seen in training. Defaults: 20,000 training canvases (184 MB at 96 × 96)
and 2,000 test canvases (18 MB), enough to train a small detector on two cores. The result is cached in
``<cache>/mnist-detect/`` (``<cache>`` as for the other datasets, ``$XDG_CACHE_HOME/cnncli``) as one ``.npz`` file,
written atomically, named after a hash of the base dataset, the split, ``count``, ``size`` and the seed (its
*slot*) and of the base files' identity (path, size, modification time, expected SHA-256) and
:data:`GENERATOR_VERSION` (its *content*); a later call with the same key reads it instead of generating, and a
new entry replaces the one of the same slot. The cache is best effort: when it cannot be written the canvases are
generated again next time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnncli.atomic import write_atomic
from cnncli.engine.boxes import Boxes
from cnncli.errors import UsageError
from cnncli.words import count as counted
from cnncli.words import either

from . import decoded, idx, registry
from .fetch import ProgressCallback
from .places import cache_dir

__all__ = [
    "BASES",
    "DEFAULT_COUNTS",
    "GENERATOR_VERSION",
    "MIN_INK",
    "NAME",
    "SPLITS",
    "cache_folder",
    "classes",
    "generate",
    "load",
    "resize",
]

#: The dataset's name (its cache folder's too).
NAME = "mnist-detect"

#: The datasets whose images the canvases are made of.
BASES: tuple[str, ...] = ("mnist", "fashion-mnist")

#: The detection datasets by name (cnncli.dataset_names.DETECTION): the base each is made of, and the least and
#: most digits a canvas (``mnist-locate``: one, for single-object localization).
DATASETS: dict[str, tuple[str, tuple[int, int]]] = {
    NAME: ("mnist", (1, 4)),
    "fashion-mnist-detect": ("fashion-mnist", (1, 4)),
    "mnist-locate": ("mnist", (1, 1)),
}

SPLITS: tuple[str, ...] = ("train", "test")

#: Canvases per split when ``count`` is not given.
DEFAULT_COUNTS: dict[str, int] = {"train": 20_000, "test": 2_000}

#: Bumped whenever the same inputs would give other canvases or boxes: every cached entry is made again.
GENERATOR_VERSION = 1

#: The least brightest pixel of a source image (a blank or nearly blank source would have no box).
MIN_INK = 16

# The seed stream of each split (the second number of SeedSequence's entropy).
_SPLIT_STREAM = {"train": 0, "test": 1}
_SLOTS = 4  # the most digits a canvas can hold
_CACHE_FORMAT = 1


# --------------------------------------------------------------------------- loading a split


def load(
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    count: int | None = None,
    size: int = 96,
    base: str = "mnist",
    progress: ProgressCallback | None = None,
    seed: int = 0,
    digits: tuple[int, int] = (1, 4),
) -> tuple[np.ndarray, Boxes]:
    """One split of ``mnist-detect``: canvases uint8 (count, 1, size, size) and their :class:`Boxes`.

    ``train`` canvases are made of ``base``'s training images only, ``test`` canvases of its test images only.
    ``count`` defaults to :data:`DEFAULT_COUNTS` (20,000 train, 2,000 test); ``data_dir`` and ``progress`` are
    :func:`cnncli.data.load`'s (where the base files are looked for, download progress); ``seed`` chooses the
    canvases (the split's generator is seeded with ``(seed, 0)`` for train, ``(seed, 1)`` for test). Read from
    the cache when it holds this split (module docstring), else generated and cached. The arrays are fresh and
    writable. Raises :class:`UsageError` for a bad argument, :class:`DataError` when the base files are missing
    or damaged.
    """
    split = _check_choice(split, SPLITS, "split")
    base = _check_choice(base, BASES, "base dataset")
    count = DEFAULT_COUNTS[split] if count is None else _check_int(count, "count", 1)
    size = _check_int(size, "size", 1)
    seed = _check_int(seed, "seed", 0)
    info = registry.get(base)
    sources = idx.locate(info, split, data_dir, progress, download=True)
    files = dict(zip(("images", "labels"), info.splits[split]))
    identity = {kind: {**decoded.identity(path), "sha256": info.sha256.get(files[kind])}
                for kind, path in sources.items()}
    digits = _check_range(digits, "digits", 1, _SLOTS)
    slot = _digest({"base": base, "split": split, "count": count, "size": size, "seed": seed,
                    **({} if digits == (1, _SLOTS) else {"digits": list(digits)})})
    content = _digest({"sources": identity, "generator": GENERATOR_VERSION, "format": _CACHE_FORMAT})
    path = cache_folder() / f"{base}-{split}-{slot}-{content}.npz"
    cached = _read(path, count, size, len(info.classes))
    if cached is not None:
        return cached
    images, labels = idx.load_split(info, split, data_dir, progress)
    canvases, boxes = generate(images, labels, count, size, seed=(seed, _SPLIT_STREAM[split]), digits=digits)
    _write(path, f"{base}-{split}-{slot}-", canvases, boxes)
    return canvases, boxes


def classes(base: str = "mnist") -> tuple[str, ...]:
    """The class names, indexed by a box's class: the base dataset's (``0`` … ``9`` for MNIST)."""
    return tuple(registry.get(_check_choice(base, BASES, "base dataset")).classes)


def cache_folder() -> Path:
    """Where generated splits are kept: ``<cnncli cache>/mnist-detect``."""
    return cache_dir() / NAME


# --------------------------------------------------------------------------- generating canvases


def generate(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    size: int = 96,
    seed: int | Sequence[int] = 0,
    *,
    digits: tuple[int, int] = (1, _SLOTS),
    sides: tuple[float, float] = (0.25, 7 / 12),
    max_overlap: float = 0.3,
    tries: int = 20,
) -> tuple[np.ndarray, Boxes]:
    """``count`` canvases uint8 (count, 1, size, size) made of the sources, and their :class:`Boxes`.

    ``images`` uint8 (n, h, h) or (n, 1, h, h), the sources (white on black, each with a pixel of at least
    :data:`MIN_INK`); ``labels`` (n,) their classes, which become the boxes' classes. ``seed``: an int or a
    sequence of ints, the entropy of numpy's ``SeedSequence``. ``digits``: the least and most digits of a canvas
    (within 1 to 4); ``sides``: the least and most side of a resized source, as fractions of ``size`` (at least
    half the source's side, at most the canvas); ``max_overlap`` and ``tries``: the placement rule. The module
    docstring gives every step and the order of the random draws. A canvas's boxes are in the order its digits
    were drawn.
    """
    src, lab = _check_sources(images, labels)
    count = _check_int(count, "count", 1)
    size = _check_int(size, "size", 1)
    lo_digits, hi_digits = _check_range(digits, "digits", 1, _SLOTS)
    lo_side, hi_side = _sides(sides, size, src.shape[1])
    if isinstance(max_overlap, bool) or not isinstance(max_overlap, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(max_overlap) <= 1.0:
        raise UsageError(f"max_overlap {max_overlap!r}: the share of a box another may cover must be in (0, 1]")
    tries = _check_int(tries, "tries", 1)
    bits = np.random.PCG64(np.random.SeedSequence(_check_seed(seed)))

    n = len(src)
    wanted = lo_digits + _choose(_uniform(bits, count), hi_digits - lo_digits + 1)
    source = _choose(_uniform(bits, (count, _SLOTS)), n)
    side = lo_side + _choose(_uniform(bits, (count, _SLOTS)), hi_side - lo_side + 1)

    canvases = np.zeros((count, size, size), dtype=np.uint8)
    boxes = np.zeros((count, _SLOTS, 4), dtype=np.int64)
    placed = np.zeros((count, _SLOTS), dtype=bool)
    for k in range(_SLOTS):
        draws = _uniform(bits, (count, tries, 2))  # drawn for every canvas, so that each consumes the same
        active = np.flatnonzero(wanted > k)
        if len(active) == 0:
            continue
        patches = {int(s): resize(src[source[active[side[active, k] == s], k]], int(s))
                   for s in np.unique(side[active, k])}
        tight = np.zeros((len(active), 4), dtype=np.int64)
        for s, patch in patches.items():
            tight[side[active, k] == s] = _tight_boxes(patch)
        corner, ok = _place(tight, side[active, k], draws[active], boxes[active, :k], placed[active, :k],
                            size, float(max_overlap))
        boxes[active, k] = tight + np.concatenate([corner, corner], axis=1)
        placed[active, k] = ok
        for s, patch in patches.items():
            mine = side[active, k] == s
            keep = ok[mine]
            _paste(canvases, active[mine][keep], corner[mine][keep], patch[keep])

    return canvases[:, None], Boxes(boxes[placed].astype(np.float32), lab[source[placed]],
                                    np.concatenate([[0], np.cumsum(placed.sum(axis=1))]))


def _uniform(bits: np.random.PCG64, shape: int | tuple[int, ...]) -> np.ndarray:
    """float64 draws in [0, 1) of ``shape``: the top 53 bits of one raw word each (module docstring)."""
    words = bits.random_raw(int(np.prod(shape)))
    return ((words >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(shape)


def _choose(u: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Uniform draws in [0, 1) → whole numbers in [0, k) (a product can round up to k itself: kept below)."""
    return np.minimum(np.floor(u * k).astype(np.int64), np.asarray(k, dtype=np.int64) - 1)


def _tight_boxes(patches: np.ndarray) -> np.ndarray:
    """int64 (m, 4): each (s, s) patch's box of its non-zero pixels, ``(x0, y0, x1, y1)`` with exclusive ends;
    ``(0, 0, 0, 0)`` for a blank patch (which :func:`_place` never places)."""
    s = patches.shape[1]
    cols = patches.any(axis=1)  # (m, s): columns with ink
    rows = patches.any(axis=2)
    out = np.stack([cols.argmax(axis=1), rows.argmax(axis=1),
                    s - cols[:, ::-1].argmax(axis=1), s - rows[:, ::-1].argmax(axis=1)], axis=1)
    out[~rows.any(axis=1)] = 0
    return out.astype(np.int64)


def _place(tight: np.ndarray, side: np.ndarray, draws: np.ndarray, earlier: np.ndarray, present: np.ndarray,
           size: int, max_overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Each digit's frame corner (m, 2) as (x, y), and whether it was placed (m,).

    ``tight`` (m, 4) the digits' boxes within their frames, ``side`` (m,) the frames' sides, ``draws``
    (m, tries, 2) the position draws, ``earlier`` (m, k, 4) and ``present`` (m, k) the boxes already on each
    canvas. The first draw whose box overlaps every earlier box by less than ``max_overlap`` of the smaller one
    is taken (module docstring); none: not placed.
    """
    corner = _choose(draws, (size - side + 1)[:, None, None])                  # (m, tries, 2)
    cand = tight[:, None, :] + np.concatenate([corner, corner], axis=2)        # (m, tries, 4)
    c, e = cand[:, :, None, :], earlier[:, None, :, :]                         # (m, tries, 1, 4), (m, 1, k, 4)
    iw = np.clip(np.minimum(c[..., 2], e[..., 2]) - np.maximum(c[..., 0], e[..., 0]), 0, None)
    ih = np.clip(np.minimum(c[..., 3], e[..., 3]) - np.maximum(c[..., 1], e[..., 1]), 0, None)
    area_c = (c[..., 2] - c[..., 0]) * (c[..., 3] - c[..., 1])
    area_e = (e[..., 2] - e[..., 0]) * (e[..., 3] - e[..., 1])
    # inter < max_overlap × smaller area, in exact integers times a float: no division by a zero area
    clear = (iw * ih < max_overlap * np.minimum(area_c, area_e)) | ~present[:, None, :]
    ok = clear.all(axis=2) & (area_c[..., 0] > 0)                              # (m, tries)
    first = ok.argmax(axis=1)
    rows = np.arange(len(tight))
    return corner[rows, first], ok[rows, first]


def _paste(canvases: np.ndarray, which: np.ndarray, corner: np.ndarray, patches: np.ndarray) -> None:
    """Paste ``patches`` (m, s, s) by the maximum at ``corner`` (m, 2) (x, y) of the canvases ``which`` (m,),
    in place; ``which`` holds each canvas at most once (one digit slot at a time)."""
    s, size = patches.shape[1], canvases.shape[1]
    ramp = np.arange(s)
    # one flat index per pixel: a single index array is several times faster than three broadcast ones
    start = (which * size + corner[:, 1]) * size + corner[:, 0]
    at = (start[:, None, None] + (ramp * size)[None, :, None] + ramp[None, None, :]).reshape(-1)
    flat = canvases.reshape(-1)
    flat[at] = np.maximum(flat[at], patches.reshape(-1))


# --------------------------------------------------------------------------- resizing


def resize(images: np.ndarray, side: int) -> np.ndarray:
    """Square images uint8 (m, h, h) → uint8 (m, side, side), Pillow's ``BILINEAR`` resize in numpy.

    Each output pixel is a weighted mean of source pixels along each axis in turn: weights ``1 - |d| / f`` of
    the distance ``d`` between pixel centres (in source pixels), ``f = max(1, h / side)`` (a triangle widened when
    shrinking, so no source pixel is skipped), normalised to sum 1 (so the edges clamp). Pillow computes the same
    weights and rounds to 8 bits between its two passes; this keeps floats until the end, so the two differ by at
    most 1. Elementwise arithmetic in a fixed order: the same bytes on any machine.
    """
    images = np.asarray(images)
    h = images.shape[1]
    if side == h:
        return images.copy()
    index, weight = _triangle(h, side)
    pixels = images.astype(np.float32)
    rows = sum(pixels[:, index[:, t], :] * weight[None, :, t, None] for t in range(index.shape[1]))
    out = sum(rows[:, :, index[:, t]] * weight[None, None, :, t] for t in range(index.shape[1]))
    return np.clip(np.floor(out + np.float32(0.5)), 0, 255).astype(np.uint8)


def _triangle(h: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The taps of resizing ``h`` pixels to ``side``: source indices int64 (side, taps) and float32 weights
    (side, taps) summing to 1 per output pixel (Pillow's ``precompute_coeffs`` with its bilinear filter; unused
    taps have weight 0)."""
    scale = h / side
    f = max(scale, 1.0)
    centre = (np.arange(side) + 0.5) * scale
    first = np.maximum(np.floor(centre - f + 0.5), 0).astype(np.int64)
    last = np.minimum(np.floor(centre + f + 0.5), h).astype(np.int64)
    taps = int((last - first).max())
    index = first[:, None] + np.arange(taps)
    weight = np.clip(1.0 - np.abs(index + 0.5 - centre[:, None]) / f, 0.0, None)
    weight[index >= last[:, None]] = 0.0
    weight /= weight.sum(axis=1, keepdims=True)
    return np.minimum(index, h - 1), weight.astype(np.float32)


# --------------------------------------------------------------------------- the cache


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("ascii")).hexdigest()[:16]


def _read(path: Path, count: int, size: int, n_classes: int) -> tuple[np.ndarray, Boxes] | None:
    """The cached split at ``path``, or None when there is none that is whole and of this shape."""
    try:
        with np.load(path, allow_pickle=False) as z:
            canvases, xyxy, box_classes, offsets = z["canvases"], z["xyxy"], z["classes"], z["offsets"]
        boxes = Boxes(xyxy, box_classes, offsets)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    if canvases.dtype != np.uint8 or canvases.shape != (count, 1, size, size) or len(boxes) != count \
            or (len(box_classes) and not 0 <= box_classes.min() <= box_classes.max() < n_classes):
        return None
    return canvases, boxes


def _write(path: Path, slot_prefix: str, canvases: np.ndarray, boxes: Boxes) -> None:
    """Cache a split at ``path`` atomically and remove the entries it replaces (same slot); best effort."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda out: np.savez(out, canvases=canvases, xyxy=boxes.xyxy, classes=boxes.classes,
                                                offsets=boxes.offsets))
        for old in folder.glob(f"{slot_prefix}*.npz"):
            if old != path:
                old.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------- checks


def _check_sources(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sources as uint8 (n, h, h) and int64 (n,), checked."""
    src = np.asarray(images)
    if src.ndim == 4 and src.shape[1] == 1:
        src = src[:, 0]
    if src.dtype != np.uint8 or src.ndim != 3 or src.shape[1] != src.shape[2] or len(src) == 0:
        raise UsageError(f"the source images must be uint8 (n, h, h) or (n, 1, h, h) with n at least 1, "
                         f"got {src.dtype} {tuple(np.shape(images))}")
    lab = np.asarray(labels)
    if lab.shape != (len(src),) or lab.dtype.kind not in "iu":
        raise UsageError(f"the source labels must be whole numbers, one per image ({len(src)}), got "
                         f"{lab.dtype} {lab.shape}")
    faint = np.flatnonzero(src.reshape(len(src), -1).max(axis=1) < MIN_INK)
    if len(faint):
        raise UsageError(f"{counted(len(faint), 'source image')} (the first: index {faint[0]}) "
                         f"{'has' if len(faint) == 1 else 'have'} no pixel of at least {MIN_INK}: a blank source "
                         "has no box")
    return src, lab.astype(np.int64)


def _sides(sides: tuple[float, float], size: int, h: int) -> tuple[int, int]:
    """The least and most side in pixels: ``sides`` × ``size`` rounded, within [ceil(h / 2), size]."""
    try:
        lo_f, hi_f = (float(v) for v in sides)
    except (TypeError, ValueError):
        raise UsageError(f"sides {sides!r} must be two fractions of the canvas size (least, most)") from None
    lo, hi = math.floor(lo_f * size + 0.5), math.floor(hi_f * size + 0.5)
    least = -(-h // 2)
    if not least <= lo <= hi <= size:
        raise UsageError(
            f"sides {sides!r} on a canvas of {size} px give digits of {lo} to {hi} px: they must lie between "
            f"{least} px (half the source's {h}: shrinking further could erase a digit) and the canvas's {size} "
            "px, the least first (a larger canvas or other fractions)")
    return lo, hi


def _check_seed(seed: int | Sequence[int]) -> list[int]:
    values = [seed] if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else seed
    try:
        values = list(values)
    except TypeError:
        values = None
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise UsageError(f"seed {seed!r} must be a whole number of at least 0 (or a sequence of them)")
    return [int(v) for v in values]


def _check_int(value: int, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise UsageError(f"{name} {value!r} must be a whole number of at least {least}")
    return int(value)


def _check_range(pair: tuple[int, int], name: str, least: int, most: int) -> tuple[int, int]:
    try:
        lo, hi = pair
    except (TypeError, ValueError):
        lo = hi = None
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (lo, hi)) \
            or not least <= lo <= hi <= most:
        raise UsageError(f"{name} {pair!r} must be two whole numbers (least, most) within {least} to {most}")
    return int(lo), int(hi)


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    key = str(value).strip().lower()
    if key not in choices:
        raise UsageError(f"unknown {what} {value!r} of {NAME}: {either(list(choices))}")
    return key
