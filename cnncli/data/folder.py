"""Image folders: a user's own pictures, one subfolder per class, decoded once into a memory-mapped cache.

Layout
------

``--data-dir DIR`` holds either

* one folder per class, ``DIR/<class>/*.png``: ``test`` is then a seeded,
  stratified share of each class and ``train`` the rest; or
* ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``, with the same class
  folders in both: the two splits are used as they are.

Class names are the folder names, sorted (as Python sorts strings: upper case
before lower case); a label is the class's index in that order. Images are the
files ending in ``.png``, ``.jpg`` or ``.jpeg`` (any case) directly inside a
class folder. Hidden files and folders (names starting with ``.``) are
ignored; any other file, and any folder inside a class folder, is not read and
is counted in :attr:`FolderDataset.notes`. Everything a classifier cannot be
trained on is a :class:`~cnncli.errors.UsageError` saying what is wrong: a
missing folder, no class folders, one class only, an empty class (named), no
images at all, ``train/`` and ``test/`` with different classes (the
difference named), or ``train/`` without ``test/`` (or the reverse).

The split without ``train/`` and ``test/``
------------------------------------------

Within each class, the files are ordered by a hash of ``(seed, file name)``
and the first ``max(1, round(test_share × n))`` of them are the test images;
a class needs at least two images. The same seed and the same files give the
same split on any machine; a file added to or removed from a class moves at
most a few others between the splits (the rest keep their place in the hash
order). Training then carves its own validation set out of ``train``.

Decoding
--------

Each image is read with Pillow (the ``images`` extra), turned upright by its
EXIF orientation, its transparent parts laid on white, converted to grey
(C = 1; 16-bit images scaled to 8 bits) or RGB (C = 3), **resized so that it
just covers H × W** (its shorter side becomes H for a square target; the
aspect ratio is kept, bilinear filter) **and centre-cropped** to H × W
(:func:`describe` says so in words). Large JPEGs are decoded at a reduced
scale first, no smaller than twice the resized size. Sizes may differ from
image to image.

Published weights expect torchvision's preparation instead (``resize``, e.g.
256 for a 224 × 224 input): the shorter side resized to ``resize``, the longer
one to ``int(resize × long / short)``, with Pillow's bilinear filter (which
antialiases when it shrinks, as torchvision's ``Resize`` does on PIL images),
then the centre H × W cut out at ``round((size - H) / 2)`` (Python's rounding,
as torchvision's ``center_crop``). JPEGs are then decoded at full size, as
torchvision decodes them.

A file Pillow cannot read (not an image, truncated, corrupt, vanished since
the scan) is **left out with a warning** (:class:`~cnncli.data.DataWarning`
naming the files and why, counted), never silently: the warning is repeated
on every load until the folder changes. A class left with no readable image
in a split is a :class:`~cnncli.errors.UsageError` naming the files.

The cache
---------

A split is decoded once into ``<cache>/image-folder/<slot>-<content>.npy``
(``<cache>`` as for the other datasets, ``$XDG_CACHE_HOME/cnncli``), a uint8
array (N, C, H, W) that :func:`load` returns memory-mapped read-only: a second
run starts at once, and a folder larger than memory is never loaded whole.
``slot`` hashes the folder's absolute path, the split, the target shape and
the split rule; ``content`` hashes the name, size and modification time of
every file of the split, and the decoder's version. A file added, removed or
touched gives a new ``content``: the split is decoded again, and the file it
replaces (same ``slot``) is removed. A small JSON record beside the array
lists the files left out.

Images are decoded one at a time and appended to a temporary file in the same
folder (no decoded float images, no whole array in memory), which is renamed
to its final name only once complete and flushed; an interruption removes it,
and a temporary file left by a killed process is removed by the next decode.
Writing with plain file writes (not into a writable memory map) makes a full
disk an ``OSError``, reported as a :class:`UsageError`, instead of a crash.
``progress(done, total)``, if given, is called while decoding (files read so
far, files in the split), at most every tenth of a second and at the end;
loads from the cache do not call it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import struct
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli import extras
from cnncli.atomic import sync_dir, write_text_atomic
from cnncli.errors import UsageError
from cnncli.words import count, plural

from .places import cache_dir
from .registry import DataWarning

__all__ = [
    "ALL",
    "DECODER",
    "IMAGE_SUFFIXES",
    "FolderDataset",
    "ImageFile",
    "Progress",
    "cache_folder",
    "check_shape",
    "decode_image",
    "decode_to_cache",
    "describe",
    "digest",
    "listing",
    "load",
    "open_cached",
    "pixel_stats",
    "read_image",
    "remove_stale",
    "scan",
]

#: The split of every image of a folder (images no weights were trained on: see cnncli.data.source).
ALL = "all"

#: The files read as images (compared case-insensitively).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

#: ``progress(done, total)``: files decoded (or left out) so far, files in the split.
Progress = Callable[[int, int], None]

#: Bumped whenever reading or decoding changes what an image becomes: every cached split (of image folders and of
#: the folders that read images with :func:`read_image`) is decoded again.
DECODER = 1
_RECORD_FORMAT = 1
_PROGRESS_EVERY = 0.1  # seconds
_SHOWN = 5  # file names shown in a message before "and N more"


@dataclass(frozen=True)
class ImageFile:
    """One image file of a folder: its path relative to the root (``/``-separated), class and identity."""

    name: str          # "cat/001.png", or "train/cat/001.png"
    label: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FolderDataset:
    """What :func:`scan` found: the classes and the image files, nothing decoded yet.

    ``files`` are ordered by class, then by name (``train/`` before ``test/``
    when the folder has both); ``notes`` are sentences about what was not
    read, for the user.
    """

    root: Path                        # absolute
    classes: tuple[str, ...]
    has_test_folder: bool             # train/ and test/ folders, else one folder per class
    files: tuple[ImageFile, ...]
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return f"image folder {self.root.name}"

    def per_class(self, files: Iterable[ImageFile] | None = None) -> list[int]:
        """Image counts by label, of ``files`` (default: all of them)."""
        counts = [0] * len(self.classes)
        for f in self.files if files is None else files:
            counts[f.label] += 1
        return counts

    def summary(self) -> str:
        """One line for a run's header: the folder, its classes and images."""
        n = len(self.files)
        text = f"{self.root}: {count(len(self.classes), 'class')}, {count(n, 'image')}"
        if self.has_test_folder:
            tests = sum(1 for f in self.files if f.name.startswith("test/"))
            text += f" ({n - tests} in train/, {tests} in test/)"
        return text

    def splittable(self) -> bool:
        """Whether a test split can be chosen: a test/ folder, or at least two images in every class."""
        return self.has_test_folder or min(self.per_class()) >= 2

    def split_rule(self, seed: int, test_share: float = 0.2) -> str:
        """How the test images are chosen, in words."""
        if self.has_test_folder:
            return "test: the test/ folder, train: the train/ folder"
        return (f"test: {_percent(test_share)} of each class (at least one image) chosen with seed {seed}, "
                "train: the rest")

    def split_files(self, split: str, seed: int, test_share: float = 0.2) -> tuple[ImageFile, ...]:
        """The files of ``split`` (``"train"``, ``"test"`` or :data:`ALL`), in ``files`` order; see the module
        docstring."""
        split = _check_split(split)
        if split == ALL:
            return self.files
        if self.has_test_folder:
            return tuple(f for f in self.files if f.name.startswith(f"{split}/"))
        test_share = _check_share(test_share)
        test = _test_names(self, seed, test_share)
        return tuple(f for f in self.files if (f.name in test) == (split == "test"))


# --------------------------------------------------------------------------- scanning


def scan(root: str | os.PathLike[str], min_classes: int = 2) -> FolderDataset:
    """Find the layout, the classes and the image files under ``root``; raise :class:`UsageError` if unusable.
    ``min_classes``: a folder to train a classifier on needs two class folders; one to score or predict with
    weights that already know its classes (a class list's) may hold one."""
    given = Path(root).expanduser()
    if not given.exists():
        raise UsageError(f"image folder {given} does not exist")
    if not given.is_dir():
        raise UsageError(f"{given} is a file, not a folder: give the folder that holds one subfolder per class")
    root = given.resolve()
    tally = _Tally()
    top = _visible(root)
    folders = {e.name for e in top if e.is_dir()}
    if "train" in folders or "test" in folders:
        missing = next((part for part in ("train", "test") if part not in folders), "")
        if missing:
            present = "train" if missing == "test" else "test"
            raise UsageError(
                f"image folder {root} has a {present}/ folder but no {missing}/ folder: give both (each with one "
                f"subfolder per class), or neither (one subfolder per class directly in {root})")
        tally.outside(e for e in top if e.name not in ("train", "test"))
        parts = {part: _classes(root / part, f"{part}/", tally) for part in ("train", "test")}
        if set(parts["train"]) != set(parts["test"]):
            only_train = sorted(set(parts["train"]) - set(parts["test"]))
            only_test = sorted(set(parts["test"]) - set(parts["train"]))
            diff = "; ".join(f"only in {where}/: {_names(names)}" for where, names in
                             (("train", only_train), ("test", only_test)) if names)
            raise UsageError(f"train/ and test/ in {root} must hold the same class folders ({diff})")
        classes = sorted(parts["train"])
    else:
        parts = {"": _classes(root, "", tally)}
        classes = sorted(parts[""])
    if not classes:
        base = root / "train" if len(parts) == 2 else root
        raise UsageError(
            f"image folder {base} holds no class folders: put each class's images in a subfolder named after "
            f"the class ({base}/cat/*.png, {base}/dog/*.png, ...)" + tally.hint())
    total = sum(len(found) for part in parts.values() for found in part.values())
    where = "train/ and test/ class folders" if len(parts) == 2 else "class folders"
    if total == 0:
        raise UsageError(f"the {where} of {root} ({_names(classes)}) hold no images "
                         f"({', '.join(IMAGE_SUFFIXES)})" + tally.hint())
    if len(classes) < min_classes:
        raise UsageError(f"image folder {root} has a single class, {classes[0]!r}: a classifier needs at least "
                         "two class folders")
    files: list[ImageFile] = []
    for prefix, found in parts.items():
        for label, name in enumerate(classes):
            if not found[name]:
                raise UsageError(f"class folder {root / prefix / name} holds no images "
                                 f"({', '.join(IMAGE_SUFFIXES)}): every class needs at least one" + tally.hint())
            folder = f"{prefix}/{name}/" if prefix else f"{name}/"
            files.extend(ImageFile(folder + fname, label, size, mtime) for fname, size, mtime in found[name])
    return FolderDataset(root, tuple(classes), len(parts) == 2, tuple(files), tally.notes())


class _Tally:
    """What a scan did not read, for the notes."""

    def __init__(self) -> None:
        self.other: dict[str, int] = {}      # suffix -> count, of non-image files in class folders
        self.nested: list[str] = []          # folders inside class folders
        self.stray: list[str] = []           # files and folders outside class folders

    def outside(self, entries: Iterable[os.DirEntry]) -> None:
        self.stray.extend(e.name + ("/" if e.is_dir() else "") for e in entries)

    def notes(self) -> tuple[str, ...]:
        notes = []
        n_other = sum(self.other.values())
        if n_other:
            kinds = ", ".join(f"{n} {suffix or 'without suffix'}" for suffix, n in sorted(self.other.items()))
            notes.append(f"{n_other} {plural(n_other, 'file')} in class folders {_are(n_other)} not PNG or JPEG and "
                         f"{_were(n_other)} ignored ({kinds})")
        if self.nested:
            notes.append(f"{len(self.nested)} {plural(len(self.nested), 'folder')} inside class folders "
                         f"{_were(len(self.nested))} not read (images must be directly in their class folder): "
                         f"{_names(self.nested)}")
        if self.stray:
            notes.append(f"{len(self.stray)} entr{'y' if len(self.stray) == 1 else 'ies'} outside the class "
                         f"folders {_were(len(self.stray))} ignored: {_names(self.stray)}")
        return tuple(notes)

    def hint(self) -> str:
        n_other = sum(self.other.values())
        if not n_other:
            return ""
        return f" ({n_other} other {plural(n_other, 'file')} found; only {', '.join(IMAGE_SUFFIXES)} files are read)"


def _visible(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise UsageError(f"cannot list the folder {folder}: {e.strerror or e}") from None


def _classes(folder: Path, prefix: str, tally: _Tally) -> dict[str, list[tuple[str, int, int]]]:
    """Class name -> [(file name, size, mtime_ns)] of the class folders in ``folder``."""
    entries = _visible(folder)
    tally.stray.extend(prefix + e.name for e in entries if not e.is_dir())
    found: dict[str, list[tuple[str, int, int]]] = {}
    for entry in entries:
        if not entry.is_dir():
            continue
        images = found.setdefault(entry.name, [])
        for item in _visible(Path(entry.path)):
            if item.is_dir():
                tally.nested.append(f"{prefix}{entry.name}/{item.name}/")
                continue
            suffix = os.path.splitext(item.name)[1].lower()
            if suffix not in IMAGE_SUFFIXES:
                tally.other[suffix] = tally.other.get(suffix, 0) + 1
                continue
            try:
                st = item.stat()
            except OSError:  # a dangling link: left for load() to report as unreadable
                st = None
            images.append((item.name, st.st_size if st else -1, st.st_mtime_ns if st else -1))
    return found


# --------------------------------------------------------------------------- the split


def _test_names(dataset: FolderDataset, seed: int, test_share: float) -> set[str]:
    by_class: list[list[ImageFile]] = [[] for _ in dataset.classes]
    for f in dataset.files:
        by_class[f.label].append(f)
    test: set[str] = set()
    for name, files in zip(dataset.classes, by_class):
        n = len(files)
        if n < 2:
            raise UsageError(
                f"class {name!r} of {dataset.root} has only {n} image: splitting off a test set needs at least "
                "two per class (add images, or give train/ and test/ folders)")
        k = min(n - 1, max(1, round(test_share * n)))
        order = sorted(files, key=lambda f: _rank(seed, f.name))
        test.update(f.name for f in order[:k])
    return test


def _rank(seed: int, name: str) -> bytes:
    return hashlib.blake2b(f"{int(seed)}\0{name}".encode("utf-8", "surrogateescape"), digest_size=16).digest()


# --------------------------------------------------------------------------- decoding one image


def _pillow():
    extras.require("images", "reading image files (PNG, JPEG)")
    from PIL import Image, ImageOps

    return Image, ImageOps


def describe(shape: Sequence[int], resize: int | None = None) -> str:
    """What :func:`decode_image` does to an image, in words, e.g. ``RGB, resized (shorter side to 32) and
    centre-cropped to 32×32``."""
    c, h, w = check_shape(shape)
    colour = "grey" if c == 1 else "RGB"
    if resize is not None:
        return f"{colour}, resized (shorter side to {resize}) and centre-cropped to {h}×{w}"
    if h == w:
        return f"{colour}, resized (shorter side to {h}) and centre-cropped to {h}×{w}"
    return f"{colour}, resized (to cover {h}×{w}, aspect ratio kept) and centre-cropped to {h}×{w}"


def decode_image(path: str | os.PathLike[str], shape: Sequence[int], resize: int | None = None) -> np.ndarray:
    """One image file as uint8 (C, H, W); ``resize``: torchvision's rule (the shorter side to it before the
    crop) instead of covering H × W; see the module docstring. Pillow's errors pass through."""
    image_mod, _ = _pillow()
    c, h, w = check_shape(shape)
    if resize is not None and resize < max(h, w):
        raise UsageError(f"resizing the shorter side to {resize} leaves too little for a {h}×{w} crop")
    # JPEGs are decoded at a reduced scale that still leaves twice the resized size (the cover rule only)
    img, _ = read_image(path, c, draft_side=max(h, w) if resize is None else None)
    if resize is None:
        scale = max(h / img.height, w / img.width)
        size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
    else:
        size = shorter_side_to(img.size, resize)
    if size != img.size:
        img = img.resize(size, image_mod.Resampling.BILINEAR)
    if resize is None:
        left, top = (size[0] - w) // 2, (size[1] - h) // 2
    else:
        left, top = int(round((size[0] - w) / 2.0)), int(round((size[1] - h) / 2.0))
    img = img.crop((left, top, left + w, top + h))
    pixels = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(pixels[None] if c == 1 else pixels.transpose(2, 0, 1))


#: EXIF orientations that turn an image a quarter (its width and height swap when it is turned upright).
_QUARTER_TURNS = (5, 6, 7, 8)


def read_image(path: str | os.PathLike[str], channels: int, draft_side: int | None = None):
    """An image file read as every image of cnncli is, before any resizing: ``(image, (width, height))``.

    The Pillow image is loaded (the file closed), turned upright by its EXIF orientation, its transparent parts
    laid on white, 16-bit pixels scaled to 8 bits, and converted to grey (``channels`` 1, mode ``L``) or RGB (3).
    ``(width, height)`` is the upright image's size in the file. ``draft_side``: a JPEG may be decoded at 1/2,
    1/4 or 1/8 scale as long as its shorter side stays at least twice ``draft_side``; the image returned is
    then smaller than ``(width, height)``. Pillow's errors pass through.
    """
    image_mod, image_ops = _pillow()
    with image_mod.open(path) as img:
        width, height = img.size  # before a draft shrinks it
        if img.format in ("JPEG", "MPO") and draft_side is not None:
            s = 2 * draft_side / min(img.width, img.height)
            if s < 1:
                img.draft(None, (math.ceil(img.width * s), math.ceil(img.height * s)))
        img.load()
        # the orientation exif_transpose reads, read as it reads it (after load)
        if img.getexif().get(0x0112, 1) in _QUARTER_TURNS:
            width, height = height, width
        image_ops.exif_transpose(img, in_place=True)
        if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            wide = np.asarray(img).astype(np.int64)
            img = image_mod.fromarray(np.clip(wide >> 8, 0, 255).astype(np.uint8), "L")
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = image_mod.alpha_composite(image_mod.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return img.convert("L" if channels == 1 else "RGB"), (width, height)


def shorter_side_to(size: tuple[int, int], resize: int) -> tuple[int, int]:
    """The (width, height) torchvision's ``Resize(resize)`` gives an image of ``size``: the shorter side
    ``resize``, the longer one scaled alike and truncated."""
    width, height = size
    short, long = min(width, height), max(width, height)
    if short == resize:
        return width, height
    other = int(resize * long / short)
    return (resize, other) if width <= height else (other, resize)


def unreadable_errors() -> tuple[type[BaseException], ...]:
    image_mod, _ = _pillow()
    # Pillow reports damaged files as OSError (UnidentifiedImageError is one), and from some
    # decoders as SyntaxError, EOFError, struct.error, ValueError, IndexError or TypeError.
    return (OSError, SyntaxError, EOFError, struct.error, ValueError, IndexError, TypeError,
            image_mod.DecompressionBombError)


# --------------------------------------------------------------------------- the cache


def make_cache(folder: Path, of: Path) -> None:
    """Make the cache ``folder`` for the decoded images of ``of``; a UsageError saying why it cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the cache folder {folder} for the decoded images of {of}: "
                         f"{e.strerror or e} (point XDG_CACHE_HOME elsewhere)") from None


def cache_folder() -> Path:
    """Where decoded image folders are kept: ``<cnncli cache>/image-folder``."""
    return cache_dir() / "image-folder"


def digest(value: object) -> str:
    """A short hash of a JSON-able value, for cache file names."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:20]


def _cache_stem(dataset: FolderDataset, split: str, shape: tuple[int, int, int], seed: int,
                test_share: float, files: Sequence[ImageFile], resize: int | None = None) -> tuple[str, str]:
    """(slot, slot-content): see the module docstring."""
    _pillow()
    import PIL

    if split == ALL:
        rule: list = ["all"]
    else:
        rule = ["folders"] if dataset.has_test_folder else ["seeded", int(seed), float(test_share)]
    where = {"root": str(dataset.root), "split": split, "shape": list(shape), "rule": rule}
    if resize is not None:  # absent otherwise: the caches of the usual rule keep their names
        where["resize"] = int(resize)
    slot = digest(where)
    content = digest({
        "decoder": DECODER,
        "pillow": PIL.__version__,
        "classes": list(dataset.classes),
        "files": [[f.name, f.label, f.size, f.mtime_ns] for f in files],
    })
    return slot, f"{slot}-{content}"


def open_cached(npy: Path, record_path: Path, names: Sequence[str],
                shape: tuple[int, int, int]) -> tuple[np.ndarray, dict] | None:
    """A split :func:`decode_to_cache` wrote: the array memory-mapped read-only and its record (``record["skipped"]``:
    the files left out, each ``{"file": name, "reason": why}``), or None when there is no complete, consistent
    entry for the files ``names``."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("format") != _RECORD_FORMAT:
            return None
        skipped = record["skipped"]
        known = set(names)
        if not all(isinstance(s, dict) and s.get("file") in known for s in skipped):
            return None
        images = np.lib.format.open_memmap(npy, mode="r")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if images.dtype != np.uint8 or images.shape != (len(names) - len(skipped), *shape):
        return None
    return images, record


def remove_stale(folder: Path, slot: str, keep: str) -> None:
    """Remove the cache entries ``keep`` replaces (names ``<slot>-...`` ending in ``.npy``, ``.json`` or ``.npz``
    that do not start with ``<keep>.``) and the temporary files of dead processes on this machine."""
    host = _host()
    for path in folder.iterdir():
        name = path.name
        try:
            if (name.startswith(slot + "-") and not name.startswith(keep + ".")
                    and name.endswith((".npy", ".json", ".npz"))):
                path.unlink()
            elif name.startswith(".") and name.endswith(".part"):
                owner = name[:-len(".part")].rsplit(".", 1)[-1]     # "<host>-<pid>"
                owner_host, _, pid = owner.rpartition("-")
                if owner_host == host and pid.isdigit() and not _alive(int(pid)):
                    path.unlink()
        except OSError:
            pass


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "localhost"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _write_npy_header(out, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(
        out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": tuple(int(d) for d in shape)})


def decode_to_cache(source: Path, items: Sequence[tuple[str, Path]], decode: Callable[[Path], np.ndarray],
                    shape: tuple[int, int, int], folder: Path, stem: str, progress: Progress | None,
                    finish: Callable[[list[dict[str, str]]], dict | None] | None = None) -> list[dict[str, str]]:
    """Decode the files ``items`` (``(name, path)``: the name the record and the messages use) one at a time with
    ``decode(path) -> uint8 shape`` into ``folder/stem.npy`` and its record ``stem.json``, atomically (module
    docstring); return the files left out (``decode`` raised one of :func:`unreadable_errors`).

    ``source``: the dataset's folder, for the record and the messages. ``finish(skipped)``, once every file is
    decoded and before anything gets its final name, may refuse the result (raise) or give more fields for the
    record (a dict). Temporary files are removed whatever happens; an ``OSError`` writing is a :class:`UsageError`.
    """
    unreadable = unreadable_errors()
    per_image = int(np.prod(shape))
    need = len(items) * per_image + 4096
    free = shutil.disk_usage(folder).free
    if free < need:
        raise UsageError(
            f"decoding {source} needs {_mb(need)} in the cache folder {folder}, which has {_mb(free)} free: "
            "free some space or point XDG_CACHE_HOME at a larger disk")
    tag = f"{_host()}-{os.getpid()}"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".{tag}.part", dir=folder)
    tmp = Path(tmp_name)
    extra: Path | None = None
    try:
        skipped: list[dict[str, str]] = []
        total = len(items)
        last = time.monotonic()
        if progress is not None:
            progress(0, total)
        with os.fdopen(fd, "wb") as out:
            _write_npy_header(out, (total, *shape))
            header = out.tell()
            for done, (name, path) in enumerate(items, 1):
                try:
                    pixels = decode(path)
                except unreadable as e:
                    skipped.append({"file": name, "reason": _reason(e)})
                else:
                    out.write(pixels.tobytes())
                if progress is not None and (done == total or time.monotonic() - last >= _PROGRESS_EVERY):
                    progress(done, total)
                    last = time.monotonic()
            out.flush()
            os.fsync(out.fileno())
        more = finish(skipped) if finish is not None else None
        if skipped:
            # The header promised every file: copy the images kept under a header of their number.
            kept = total - len(skipped)
            fd2, extra_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".{tag}.part", dir=folder)
            extra = Path(extra_name)
            with os.fdopen(fd2, "wb") as out, open(tmp, "rb") as src:
                _write_npy_header(out, (kept, *shape))
                src.seek(header)
                left = kept * per_image
                while left:
                    chunk = src.read(min(left, 1 << 22))
                    out.write(chunk)
                    left -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.unlink()
            tmp, extra = extra, None
        record = {"format": _RECORD_FORMAT, "root": str(source), "shape": list(shape),
                  "images": total - len(skipped), "skipped": skipped, **(more or {})}
        # The record first, the array last: an array under its final name always has its record.
        write_text_atomic(folder / f"{stem}.json", json.dumps(record, indent=1))
        os.replace(tmp, folder / f"{stem}.npy")
        sync_dir(folder)
    except BaseException as e:
        for path in (tmp, extra):
            if path is not None:
                try:
                    path.unlink()
                except OSError:
                    pass
        if isinstance(e, OSError):
            raise UsageError(f"cannot write the decoded images of {source} to the cache folder {folder}: "
                             f"{e.strerror or e} (point XDG_CACHE_HOME elsewhere, or free some space)") from None
        raise
    return skipped


def _check_every_class_left(dataset: FolderDataset, files: Sequence[ImageFile],
                            skipped: Sequence[dict[str, str]]) -> None:
    label_of = {f.name: f.label for f in files}
    out = {s["file"] for s in skipped}
    have = dataset.per_class(f for f in files if f.name not in out)
    for label, left in enumerate(have):
        if left == 0:
            lost = [s for s in skipped if label_of[s["file"]] == label]
            raise UsageError(f"no image of class {dataset.classes[label]!r} in {dataset.root} could be read: "
                             + listing(lost))


# --------------------------------------------------------------------------- loading


def load(
    dataset: FolderDataset,
    split: str,
    shape: Sequence[int],
    seed: int,
    test_share: float = 0.2,
    progress: Progress | None = None,
    resize: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One split of an image folder: images uint8 (N, C, H, W), memory-mapped read-only, and labels int64 (N,).

    ``split`` is ``"train"``, ``"test"`` or :data:`ALL` (every image); ``shape`` the images' (C, H, W)
    with C 1 (grey) or 3 (RGB); ``seed`` and ``test_share`` (in (0, 1)) choose
    the test images of a folder without ``train/`` and ``test/``; ``resize`` is
    :func:`decode_image`'s. Decodes into the cache unless the split is there
    already (module docstring). Files that cannot be read are left out with a
    :class:`DataWarning`.
    """
    split = _check_split(split)
    shape = check_shape(shape)
    test_share = _check_share(test_share)
    files = dataset.split_files(split, seed, test_share)
    folder = cache_folder()
    slot, stem = _cache_stem(dataset, split, shape, seed, test_share, files, resize)
    npy, record = folder / f"{stem}.npy", folder / f"{stem}.json"
    names = [f.name for f in files]
    cached = open_cached(npy, record, names, shape)
    if cached is None:
        make_cache(folder, dataset.root)
        remove_stale(folder, slot, keep=stem)
        decode_to_cache(dataset.root, [(name, dataset.root / name) for name in names],
                        lambda path: decode_image(path, shape, resize), shape, folder, stem, progress,
                        finish=lambda skipped: _check_every_class_left(dataset, files, skipped))
        cached = open_cached(npy, record, names, shape)
        if cached is None:  # pragma: no cover - written and read back by this very process
            raise UsageError(f"the decoded images of {dataset.root} in {folder} could not be read back")
    images, skipped = cached[0], cached[1]["skipped"]
    if skipped:
        warnings.warn(
            f"{len(skipped)} of {count(len(files), 'image' if split == ALL else f'{split} image')} in {dataset.root} "
            "could not be read and "
            f"{_are(len(skipped))} left out: "
            + listing(skipped) + ". Fix or delete them; the folder is decoded again when it changes.",
            DataWarning, stacklevel=2)
    out = {s["file"] for s in skipped}
    labels = np.array([f.label for f in files if f.name not in out], dtype=np.int64)
    return images, labels


def pixel_stats(images: np.ndarray, chunk_bytes: int = 1 << 24) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), pixels scaled to [0, 1].

    Reads the images a chunk at a time (a memory map stays on disk); sums are exact integers.
    """
    n, c = images.shape[:2]
    if images.dtype != np.uint8 or images.ndim != 4 or n == 0:
        raise UsageError(f"pixel_stats needs uint8 images (N, C, H, W) with N > 0, got {images.dtype} "
                         f"{tuple(images.shape)}")
    per = max(1, chunk_bytes // max(1, images[0].size))
    s1 = np.zeros(c, dtype=np.int64)
    s2 = np.zeros(c, dtype=np.int64)
    for start in range(0, n, per):
        block = np.asarray(images[start:start + per])
        s1 += block.sum(axis=(0, 2, 3), dtype=np.int64)
        s2 += np.square(block, dtype=np.uint16).sum(axis=(0, 2, 3), dtype=np.int64)
    count = n * images.shape[2] * images.shape[3]
    mean = s1 / (count * 255.0)
    var = np.maximum(s2 / (count * 255.0 ** 2) - mean ** 2, 0.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(var))


# --------------------------------------------------------------------------- checks and words


def _check_split(split: str) -> str:
    key = str(split).strip().lower()
    if key not in ("train", "test", ALL):
        raise UsageError(f"unknown split {split!r} of an image folder: 'train' or 'test'")
    return key


def check_shape(shape: Sequence[int], what: str = "image folder images") -> tuple[int, int, int]:
    """``shape`` as (C, H, W) ints, C 1 (grey) or 3 (RGB); a :class:`UsageError` naming ``what`` otherwise."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if (len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) for d in dims)
            or dims[0] not in (1, 3) or dims[1] < 1 or dims[2] < 1):
        raise UsageError(f"{what} must be shaped (C, H, W) with C 1 (grey) or 3 (RGB) and H, W "
                         f"at least 1, got {shape!r}")
    return int(dims[0]), int(dims[1]), int(dims[2])


def _check_share(test_share: float) -> float:
    if (isinstance(test_share, bool) or not isinstance(test_share, (int, float, np.integer, np.floating))
            or not 0.0 < float(test_share) < 1.0):
        raise UsageError(f"the test share of an image folder must be a fraction between 0 and 1 (exclusive), "
                         f"got {test_share!r}")
    return float(test_share)


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def listing(skipped: Sequence[dict[str, str]]) -> str:
    """The files left out, ``name (why)``, the first few then ``and N more``."""
    shown = "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:_SHOWN])
    more = len(skipped) - _SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _percent(share: float) -> str:
    return f"{100 * share:g}%"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _are(n: int) -> str:
    return "is" if n == 1 else "are"


def _were(n: int) -> str:
    return "was" if n == 1 else "were"
