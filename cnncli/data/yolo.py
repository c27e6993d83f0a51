"""YOLO folders: a detection dataset in the layout labelling tools export for Ultralytics, letterboxed to a model.

Use
---

* :func:`scan` (DIR or its yaml) → :class:`YoloDataset`: class ``names``, each split's image and label files,
  ``notes``; nothing decoded.
* :func:`load` (dataset, split, (C, H, W)) → images uint8 (N, C, H, W) letterboxed to the input (a read-only
  memory map) and their :class:`~cnncli.engine.boxes.Boxes` (``xyxy`` in the input's pixels, classes indexing
  ``names``); :func:`load_split` gives a :class:`YoloSplit` that adds the files kept and their original sizes.
* :func:`statistics` → per-channel mean and std of the letterboxed training images, for normalising.
* :func:`read_letterboxed` (an image file) → pixels (C, H, W) and its :class:`Letterbox`, whose
  :meth:`~Letterbox.to_image` takes a model's boxes back to the file's pixels (:func:`letterbox` gives the same
  record from a size alone).

Layout
------

``DIR/data.yaml`` (or ``data.yml``; or a ``.yaml`` file given itself) describes the dataset::

    path: .               # optional: the folder the split paths are relative to
    train: images/train   # a folder of images, a .txt list of images, or a list of these
    val: images/val       # (``validation:`` is read as ``val:``)
    test: images/test     # optional
    names: [cat, dog]     # or a mapping {0: cat, 1: dog}; ``nc:``, if given, must be its length

* ``path:`` relative is taken from the yaml's folder, and without it the split paths are relative to the yaml's
  folder (Ultralytics takes a relative ``path:`` from its own datasets folder, which a folder exported
  elsewhere does not know). A split path starting with ``../`` that does not exist is read without the ``../``
  (Ultralytics' rule for Roboflow's exports, whose ``data.yaml`` says ``train: ../train/images`` beside a
  ``train/`` folder).
* A folder holds its images at any depth; a ``.txt`` list names one image a line: ``./x.jpg`` relative to the
  list's folder (Ultralytics' rule), another relative path relative to ``path:`` (CVAT's ``train.txt``), or an
  absolute path. Images are the files ending in ``.png``, ``.jpg`` or ``.jpeg`` (as for image folders); hidden
  files and folders are ignored, other files are counted in the notes. Each split's images are sorted by name; an
  image listed twice in a split is read once.
* ``train`` is required; ``val`` and ``test`` are optional (:attr:`YoloDataset.splits` says which there are;
  whether a run needs ``val`` is its own rule).
* An image's label file is at its path with the **last** ``images`` folder of the path replaced by ``labels``
  and the suffix by ``.txt`` (``images/train/a.jpg`` → ``labels/train/a.txt``; Ultralytics'
  ``img2label_paths``); a path without an ``images`` folder has its labels beside it.
* A label file holds one object a line, ``class cx cy w h``: the class's index in ``names`` and the box's
  centre, width and height as fractions of the image's width and height. A polygon ``class x1 y1 x2 y2 ...``
  (three points or more: a segmentation export) is read as the box around it, as Ultralytics does; with
  ``kpt_shape: [k, d]`` in the yaml (pose labels) a line is the box then ``k × d`` keypoint numbers, which
  are not read. An image without a label file, or with an empty one, has no objects.

What stops a run and what does not
----------------------------------

A :class:`~cnncli.errors.DataError` names the file (and line), what is wrong and the rule, and stops the run:

* the yaml: missing, unreadable, not a mapping, no ``names`` (or a mapping whose keys are not 0..n-1, or ``nc``
  disagreeing), no ``train``, a split path that does not exist, a ``.txt`` list naming files that do not exist,
  a split without images;
* the labels of the split being loaded, **all of them checked before any image is decoded and reported
  together** (the first ten, then "and N more"): a line that is not numbers, of the wrong count (4: the class
  missing? 6: a prediction's confidence?), a class that is not a whole number in ``0..len(names)-1``, a width or
  height that is not positive, a box (or polygon point) outside the image by more than :data:`TOLERANCE` (a
  box within it is clipped to the image), a label file that cannot be read as text;
* a split none of whose images has a label file: the labels are almost surely elsewhere (an empty label file
  is how a split of background images is told apart);
* a split none of whose images can be read.

Left out or changed with a :class:`~cnncli.data.DataWarning`, repeated on every load: images Pillow cannot read
(image folders' rule), with their labels; a label line repeated in the same file (the copies dropped, as
Ultralytics does: a duplicate object would count as a missed detection forever). Said in
:attr:`YoloDataset.notes`: images without a label file, files that are not images, images in several splits.

Letterbox
---------

A model takes every image at its input's ``W × H`` (:class:`Letterbox`, Ultralytics' ``LetterBox`` with its
defaults): the image, upright and grey or RGB as image folders read it (:func:`cnncli.data.folder.read_image`),
is scaled by ``r = min(W / w, H / h)`` (up or down) to ``round(w r) × round(h r)`` with Pillow's bilinear
filter, centred (``left = (W - w') // 2``, ``top = (H - h') // 2``) and padded with grey 114. A box moves with
the pixels: ``x → x · w'/w + left``, ``y → y · h'/h + top`` (the exact scale of each axis; Ultralytics scales by
``r``, which differs by less than half a pixel); :meth:`Letterbox.to_image` is the inverse, for drawing a
model's boxes on the original image. Pixels differ from Ultralytics' (OpenCV's bilinear filter does not
antialias when it shrinks); the geometry is the same.

The cache
---------

A split is decoded once, as image folders are (:func:`cnncli.data.folder.decode_to_cache`: streamed to a
temporary file, renamed when complete, memory-mapped read-only), into ``<cache>/yolo/<slot>-<content>.npy``
with its JSON record (the files left out, each image's original size). ``slot`` hashes the yaml's path, the
split and the input shape; ``content`` the images' names, sizes and modification times, the decoder's version
and Pillow's. The boxes are kept beside it in ``<slot>-<content>-<labels>.npz``, ``labels`` hashing the label
files' names, sizes and modification times and the number of names: a changed label file re-reads the labels
without decoding an image again.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from cnncli import extras
from cnncli.atomic import write_atomic
from cnncli.engine.boxes import Boxes, from_yolo
from cnncli.errors import DataError, UsageError
from cnncli.words import count, listed, plural

from . import folder
from .folder import IMAGE_SUFFIXES, Progress
from .places import cache_dir
from .registry import DataWarning

__all__ = [
    "PAD",
    "SPLITS",
    "TOLERANCE",
    "YAML_NAMES",
    "Letterbox",
    "YoloDataset",
    "YoloFile",
    "YoloSplit",
    "cache_folder",
    "describe",
    "label_path",
    "letterbox",
    "load",
    "load_split",
    "read_letterboxed",
    "scan",
    "statistics",
]

#: The splits a data.yaml may name, in order.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: The grey of the letterbox's padding (Ultralytics').
PAD = 114

#: How far (a fraction of the image) a box may reach outside the image and be clipped rather than refused.
TOLERANCE = 1e-3

#: The yaml file looked for in a YOLO folder, in order.
YAML_NAMES: tuple[str, ...] = ("data.yaml", "data.yml")

# Bumped whenever what an image becomes (the letterbox) or how labels are read changes: cached splits are redone.
_IMAGES_FORMAT = 1
_LABELS_FORMAT = 1
_SHOWN = 5            # file names in a message before "and N more"
_SHOWN_PROBLEMS = 10  # label problems in a message before "and N more"


# --------------------------------------------------------------------------- the letterbox


@dataclass(frozen=True)
class Letterbox:
    """Where an image of ``width × height`` pixels lands in a model input of ``input_width × input_height``:
    scaled to ``scaled_width × scaled_height`` and placed at ``(left, top)``, the rest grey (module docstring)."""

    width: int
    height: int
    input_width: int
    input_height: int
    scaled_width: int
    scaled_height: int
    left: int
    top: int

    def to_input(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes ``xyxy`` (m, 4) in the original image's pixels → float32 (m, 4) in the input's, inside the image."""
        b = np.clip(np.asarray(xyxy, np.float64).reshape(-1, 4), 0, [self.width, self.height] * 2)
        scale = np.array([self.scaled_width / self.width, self.scaled_height / self.height] * 2)
        return (b * scale + [self.left, self.top] * 2).astype(np.float32)

    def to_image(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes ``xyxy`` (m, 4) in the input's pixels (a model's) → float32 (m, 4) in the original image's,
        clipped to the image (a box on the padding shrinks to the image's edge)."""
        b = np.asarray(xyxy, np.float64).reshape(-1, 4) - [self.left, self.top] * 2
        scale = np.array([self.width / self.scaled_width, self.height / self.scaled_height] * 2)
        return np.clip(b * scale, 0, [self.width, self.height] * 2).astype(np.float32)


def letterbox(width: int, height: int, shape: Sequence[int]) -> Letterbox:
    """How a ``width × height`` image goes into a model input of ``shape`` (C, H, W) (module docstring)."""
    _, h_in, w_in = folder.check_shape(shape, "a YOLO folder's model input")
    if width < 1 or height < 1:
        raise UsageError(f"an image of {width}×{height} pixels cannot be letterboxed")
    r = min(w_in / width, h_in / height)
    # Python's round, as Ultralytics' int(round(w * r)); one side is the input's exactly
    scaled_w = min(w_in, max(1, int(round(width * r))))
    scaled_h = min(h_in, max(1, int(round(height * r))))
    return Letterbox(int(width), int(height), w_in, h_in, scaled_w, scaled_h, (w_in - scaled_w) // 2,
                     (h_in - scaled_h) // 2)


def read_letterboxed(path: str | os.PathLike[str], shape: Sequence[int]) -> tuple[np.ndarray, Letterbox]:
    """An image file letterboxed to ``shape`` (C, H, W): pixels uint8 (C, H, W) and where the image went (its
    :meth:`Letterbox.to_image` takes a model's boxes back to the file's pixels). Pillow's errors pass through."""
    c, h_in, w_in = folder.check_shape(shape, "a YOLO folder's model input")
    img, (width, height) = folder.read_image(path, c, draft_side=max(h_in, w_in))
    box = letterbox(width, height, shape)
    size = (box.scaled_width, box.scaled_height)
    if img.size != size:
        from PIL import Image  # read_image checked the images extra

        img = img.resize(size, Image.Resampling.BILINEAR)
    pixels = np.full((c, h_in, w_in), PAD, dtype=np.uint8)
    scaled = np.asarray(img, dtype=np.uint8)
    pixels[:, box.top:box.top + box.scaled_height, box.left:box.left + box.scaled_width] = \
        scaled[None] if c == 1 else scaled.transpose(2, 0, 1)
    return pixels, box


def describe(shape: Sequence[int]) -> str:
    """What :func:`read_letterboxed` does to an image, in words."""
    c, h, w = folder.check_shape(shape, "a YOLO folder's model input")
    return (f"{'grey' if c == 1 else 'RGB'}, letterboxed to {h}×{w} (scaled to fit, aspect ratio kept, centred, "
            f"padded with grey {PAD})")


# --------------------------------------------------------------------------- what a scan finds


@dataclass(frozen=True)
class YoloFile:
    """One image of a split and its label file. ``name`` and ``label_name`` are as messages show them: relative
    to the dataset's root when inside it (``images/train/a.jpg``), else absolute."""

    name: str
    path: Path             # absolute
    size: int
    mtime_ns: int
    label_name: str
    label: Path            # absolute; the file may not exist
    label_size: int        # -1: no label file
    label_mtime_ns: int

    @property
    def labelled(self) -> bool:
        return self.label_size >= 0


@dataclass(frozen=True)
class YoloDataset:
    """What :func:`scan` found: the class names and each split's files, nothing read yet.

    ``splits`` maps each split the yaml names (of :data:`SPLITS`, ``train`` always) to its files, sorted by name;
    ``kpt_shape`` is the yaml's (pose labels), else None; ``notes`` are sentences for the user.
    """

    yaml: Path                                   # absolute
    root: Path                                   # absolute: the folder split paths are relative to
    names: tuple[str, ...]
    splits: dict[str, tuple[YoloFile, ...]] = field(hash=False)
    kpt_shape: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return f"YOLO folder {self.yaml.parent.name}"

    def files(self, split: str) -> tuple[YoloFile, ...]:
        """The files of ``split``; a :class:`DataError` when the yaml names no such split."""
        key = _check_split(split)
        if key not in self.splits:
            raise DataError(f"{self.yaml} names no {key} split (its splits: {', '.join(self.splits)}); add "
                            f"`{key}: <folder or .txt list of images>` to it")
        return self.splits[key]

    def summary(self) -> str:
        """One line for a run's header: the yaml, its classes and images."""
        parts = ", ".join(f"{count(len(files), 'image')} in {split}" for split, files in self.splits.items())
        return f"{self.yaml}: {count(len(self.names), 'class')}, {parts}"


# --------------------------------------------------------------------------- scanning


def scan(root: str | os.PathLike[str]) -> YoloDataset:
    """Read ``root``'s data.yaml (``root`` a folder holding it, or the yaml file) and find every split's images
    and label files; a :class:`DataError` when the dataset is unusable (module docstring). Reads no image."""
    yaml_path = _find_yaml(Path(root).expanduser())
    data = _read_yaml(yaml_path)
    names = _names(data, yaml_path)
    base = _base(data, yaml_path)
    kpt_shape = _kpt_shape(data, yaml_path)
    notes: list[str] = []
    if os.path.abspath(base) != os.path.abspath(yaml_path.parent):
        # a copied folder whose yaml still names the original's path reads the original's images and labels
        notes.append(f"{yaml_path.name}'s path: is {base}: the splits' images and labels are read there")
    if data.get("val") in (None, "") and data.get("validation") not in (None, ""):
        data["val"] = data["validation"]
        notes.append(f"{yaml_path.name}'s validation: is read as its val split")
    if data.get("train") in (None, "", []):
        raise DataError(f"{yaml_path} names no train split: add `train: images/train` (a folder of images, a .txt "
                        f"list of images, or a list of these, relative to {base})")
    tally = _Tally()
    splits: dict[str, tuple[YoloFile, ...]] = {}
    for split in SPLITS:
        value = data.get(split)
        if value in (None, "", []):
            continue
        images = _split_images(value, split, base, yaml_path, tally)
        splits[split] = tuple(_file(path, base) for path in images)
    notes.extend(_notes(splits, tally))
    return YoloDataset(yaml_path, base, names, splits, kpt_shape, tuple(notes))


def label_path(image: str | os.PathLike[str]) -> Path:
    """The label file of ``image`` (an absolute path): its last ``images`` folder replaced by ``labels``, its
    suffix by ``.txt`` (Ultralytics' rule; beside the image when the path has no ``images`` folder)."""
    text = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(os.path.splitext(sb.join(text.rsplit(sa, 1)))[0] + ".txt")


def _find_yaml(given: Path) -> Path:
    if not given.exists():
        raise DataError(f"YOLO folder {given} does not exist")
    if given.is_file():
        if given.suffix.lower() not in (".yaml", ".yml"):
            raise DataError(f"{given} is neither a YOLO folder nor its .yaml file: give the folder that holds "
                            "data.yaml, or the yaml file itself")
        return given.resolve()
    for name in YAML_NAMES:
        if (given / name).is_file():
            return (given / name).resolve()
    others = sorted(p.name for p in given.glob("*.y*ml") if p.is_file() and p.suffix.lower() in (".yaml", ".yml"))
    hint = f"; it holds {', '.join(others[:_SHOWN])}: give that file's path instead of the folder" if others else ""
    raise DataError(f"YOLO folder {given} has no data.yaml, which names the classes (names:) and the splits "
                    f"(train:, val:) of a dataset in Ultralytics' layout{hint}")


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{where} is not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must be a YAML mapping (names:, train:, val:, ...), not "
                        f"{'an empty file' if data is None else type(data).__name__}")
    return dict(data)


def _names(data: dict, path: Path) -> tuple[str, ...]:
    raw = data.get("names")
    nc = data.get("nc")
    example = "`names: [cat, dog]` or `names: {0: cat, 1: dog}`"
    if raw in (None, [], {}, ""):
        told = f" (nc: {nc} gives only their number)" if nc is not None else ""
        raise DataError(f"{path} has no names: list the class names, {example}{told}")
    if isinstance(raw, dict):
        keys = {}
        for key, value in raw.items():
            index = key if isinstance(key, int) and not isinstance(key, bool) else \
                int(key) if isinstance(key, str) and key.strip().isdigit() else None
            if index is None:
                raise DataError(f"{path}: names: key {key!r} is not a class index; the keys are 0, 1, ... ({example})")
            keys[index] = value
        expected = set(range(len(keys)))
        if set(keys) != expected:
            wrong = sorted(set(keys) - expected)
            raise DataError(f"{path}: names: the keys must be the class indices 0..{len(keys) - 1}, each once; "
                            f"{', '.join(map(str, wrong[:_SHOWN]))} {'is' if len(wrong) == 1 else 'are'} not "
                            f"({example})")
        values = [keys[i] for i in range(len(keys))]
    elif isinstance(raw, list):
        values = raw
    else:
        raise DataError(f"{path}: names: must be a list or a mapping of class names ({example}), not {raw!r}")
    for i, value in enumerate(values):
        if value is None or isinstance(value, (list, dict)) or str(value).strip() == "":
            raise DataError(f"{path}: names: class {i} has no name ({value!r}); every class needs one ({example})")
    names = tuple(str(v) for v in values)
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc != len(names)):
        raise DataError(f"{path}: nc: {nc!r} must be the number of names, {len(names)} (or leave nc: out)")
    return names


def _base(data: dict, path: Path) -> Path:
    """The folder split paths are relative to: ``path:`` (relative: to the yaml's folder), else the yaml's."""
    value = data.get("path")
    if value in (None, ""):
        return path.parent
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DataError(f"{path}: path: must be a folder, not {value!r}")
    given = Path(str(value)).expanduser()
    base = given if given.is_absolute() else path.parent / given
    if not base.is_dir():
        raise DataError(f"{path}: path: {value} ({base}) is not a folder; path: is the folder the split paths are "
                        "relative to (a relative one is taken from the yaml's folder)")
    return Path(os.path.abspath(base))


def _kpt_shape(data: dict, path: Path) -> tuple[int, int] | None:
    value = data.get("kpt_shape")
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise DataError(f"{path}: kpt_shape: {value!r} must be [keypoints, numbers per keypoint], e.g. [17, 3]")
    return int(value[0]), int(value[1])


class _Tally:
    """What a scan did not read, for the notes."""

    def __init__(self) -> None:
        self.other: dict[str, int] = {}   # suffix -> count, of files that are not images
        self.repeated: dict[str, int] = {}  # split -> images listed more than once

    def ignore(self, name: str) -> None:
        suffix = os.path.splitext(name)[1].lower()
        self.other[suffix] = self.other.get(suffix, 0) + 1


def _split_images(value: object, split: str, base: Path, yaml_path: Path, tally: _Tally) -> list[Path]:
    """The absolute paths of ``split``'s images, sorted, each once."""
    entries = value if isinstance(value, list) else [value]
    if not entries or any(not isinstance(e, str) or not e.strip() for e in entries):
        raise DataError(f"{yaml_path}: {split}: must be a folder of images or a .txt list of images (or a list of "
                        f"these), not {value!r}")
    found: list[Path] = []
    for entry in entries:
        place = _resolve(entry.strip(), base)
        told = "its path:" if base != yaml_path.parent else "the yaml file's folder, there being no path:"
        rule = f"split paths are relative to {base} ({told})"
        if not place.exists():
            raise DataError(f"{yaml_path}: {split}: {entry} does not exist ({place}); {rule}")
        if place.is_dir():
            found.extend(_walk(place, tally))
        elif place.suffix.lower() == ".txt":
            found.extend(_listed(place, base, split, yaml_path, tally))
        else:
            raise DataError(f"{yaml_path}: {split}: {entry} ({place}) is a file but not a .txt list of images; a split "
                            "is a folder of images or a .txt list of them, one a line")
    unique = sorted(set(found))
    if len(unique) < len(found):
        tally.repeated[split] = len(found) - len(unique)
    if not unique:
        others = sum(tally.other.values())
        hint = f" ({others} other {plural(others, 'file')} found)" if others else ""
        raise DataError(f"{yaml_path}: the {split} split ({', '.join(map(str, entries))}) holds no images "
                        f"({', '.join(IMAGE_SUFFIXES)}){hint}")
    return unique


def _resolve(entry: str, base: Path) -> Path:
    given = Path(entry).expanduser()
    if given.is_absolute():
        return given
    place = base / given
    if not place.exists() and entry.startswith("../"):
        beside = base / entry[3:]
        if beside.exists():  # Ultralytics' rule for Roboflow's ../train/images
            return Path(os.path.abspath(beside))
    return Path(os.path.abspath(place))


def _walk(top: Path, tally: _Tally) -> list[Path]:
    images: list[Path] = []
    try:
        for folder_path, dirs, files in os.walk(top, onerror=_raise):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                    images.append(Path(folder_path) / name)
                elif not name.endswith(".txt"):  # label files beside their images are not strays
                    tally.ignore(name)
    except OSError as e:
        raise DataError(f"cannot list the folder {e.filename or top}: {e.strerror or e}") from None
    return images


def _raise(error: OSError) -> None:
    raise error


def _listed(lst: Path, base: Path, split: str, yaml_path: Path, tally: _Tally) -> list[Path]:
    try:
        lines = lst.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {lst}, the {split} list of {yaml_path}: "
                        f"{getattr(e, 'strerror', None) or e}") from None
    images: list[Path] = []
    missing: list[str] = []
    for line in lines:
        entry = line.strip()
        if not entry:
            continue
        if entry.startswith("./"):
            path = lst.parent / entry[2:]
        else:
            given = Path(entry).expanduser()
            path = given if given.is_absolute() else base / given
        path = Path(os.path.abspath(path))
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            tally.ignore(path.name)
        elif not path.is_file():
            missing.append(entry)
        else:
            images.append(path)
    if missing:
        raise DataError(f"{lst} (the {split} list of {yaml_path}) names {count(len(missing), 'image')} that "
                        f"{'does' if len(missing) == 1 else 'do'} not exist: {_shown(missing)}; a line ./x.jpg is "
                        f"relative to the list's folder, another relative one to {base}")
    return images


def _file(path: Path, base: Path) -> YoloFile:
    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:  # vanished or a dangling link: left for load() to report as unreadable
        size, mtime = -1, -1
    label = label_path(path)
    try:
        lst = label.stat()
        label_size, label_mtime = (lst.st_size, lst.st_mtime_ns) if label.is_file() else (-1, -1)
    except OSError:
        label_size, label_mtime = -1, -1
    return YoloFile(_shown_name(path, base), path, size, mtime, _shown_name(label, base), label, label_size,
                    label_mtime)


def _shown_name(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _notes(splits: dict[str, tuple[YoloFile, ...]], tally: _Tally) -> list[str]:
    notes = []
    for split, files in splits.items():
        bare = [f for f in files if not f.labelled]
        if len(bare) == len(files):
            notes.append(f"{split}: none of its {count(len(files), 'image')} has a label file (looked for at "
                         f"{bare[0].label_name}: the last images/ folder of an image's path becomes labels/, its "
                         "suffix .txt)")
        elif bare:
            notes.append(f"{split}: {len(bare)} of {count(len(files), 'image')} have no label file and so no "
                         f"objects (e.g. {bare[0].label_name})")
    for split, n in tally.repeated.items():
        notes.append(f"{split}: {count(n, 'image')} listed more than once {'was' if n == 1 else 'were'} read once")
    n_other = sum(tally.other.values())
    if n_other:
        kinds = ", ".join(f"{n} {suffix or 'without suffix'}" for suffix, n in sorted(tally.other.items()))
        notes.append(f"{n_other} {plural(n_other, 'file')} of the splits {'is' if n_other == 1 else 'are'} not PNG "
                     f"or JPEG and {'was' if n_other == 1 else 'were'} ignored ({kinds})")
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = {f.path for f in splits[a]} & {f.path for f in splits[b]}
            if shared:
                notes.append(f"{count(len(shared), 'image')} {'is' if len(shared) == 1 else 'are'} in both {a} and "
                             f"{b}: scores on {b} are then not of unseen images")
    return notes


# --------------------------------------------------------------------------- reading labels


@dataclass(frozen=True)
class _Labels:
    """One image's objects: boxes (m, 4) ``cx cy w h`` normalised (within :data:`TOLERANCE` of the image);
    classes (m,)."""

    cxcywh: np.ndarray
    classes: np.ndarray
    duplicates: int = 0


_NO_OBJECTS = _Labels(np.zeros((0, 4)), np.zeros(0, np.int64))


def check_labels(dataset: YoloDataset) -> None:
    """Read every split's label files, no image: a :class:`DataError` listing a split's problems, before any
    decoding (a bad line in ``val`` stops the run before ``train``'s images are decoded)."""
    for split, files in dataset.splits.items():
        _read_labels(dataset, split, files)


def _read_labels(dataset: YoloDataset, split: str, files: Sequence[YoloFile]) -> list[_Labels]:
    """Every file's labels; a :class:`DataError` listing every problem of the split's label files."""
    problems: list[str] = []
    out = [_read_label_file(f, len(dataset.names), dataset.kpt_shape, problems) if f.labelled else _NO_OBJECTS
           for f in files]
    if problems:
        shown = "; ".join(problems[:_SHOWN_PROBLEMS])
        more = len(problems) - _SHOWN_PROBLEMS
        raise DataError(
            f"{count(len(problems), 'problem')} in the label files of the {split} split of {dataset.yaml}: {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + f". A label line is `class cx cy w h`: the class's index in names (0..{len(dataset.names) - 1}), "
            "then the box's centre x, centre y, width and height as fractions of the image's width and height")
    return out


def _read_label_file(f: YoloFile, n_names: int, kpt_shape: tuple[int, int] | None, problems: list[str]) -> _Labels:
    try:
        text = f.label.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        problems.append(f"{f.label_name}: not a text file")
        return _NO_OBJECTS
    except OSError as e:
        problems.append(f"{f.label_name}: cannot be read ({e.strerror or e})")
        return _NO_OBJECTS
    boxes: list[tuple[float, float, float, float]] = []
    classes: list[int] = []
    seen: set[tuple[str, ...]] = set()
    duplicates = 0
    for number, line in enumerate(text.splitlines(), 1):
        words = tuple(line.split())
        if not words:
            continue
        where = f"{f.label_name} line {number}"
        parsed = _parse_line(words, n_names, kpt_shape)
        if isinstance(parsed, str):
            problems.append(f"{where}: {parsed}")
            continue
        if words in seen:
            duplicates += 1
            continue
        seen.add(words)
        classes.append(parsed[0])
        boxes.append(parsed[1])
    return _Labels(np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64), duplicates)


def _parse_line(words: tuple[str, ...], n_names: int,
                kpt_shape: tuple[int, int] | None) -> tuple[int, tuple[float, float, float, float]] | str:
    """``(class, (cx, cy, w, h))`` of one label line (a polygon's: the box around it), or what is wrong with it."""
    values = []
    for word in words:
        try:
            values.append(float(word))
        except ValueError:
            return f"{word!r} is not a number"
    if not all(math.isfinite(v) for v in values):
        return f"{' '.join(words)!r} holds a number that is not finite"
    n = len(values)
    box = n == 5 or (kpt_shape is not None and n == 5 + kpt_shape[0] * kpt_shape[1])
    polygon = n >= 7 and n % 2 == 1 and kpt_shape is None
    if not (box or polygon):
        return _count_problem(n, kpt_shape)
    cls = values[0]
    if cls != int(cls):
        return f"class {words[0]} is not a whole number"
    if not 0 <= cls < n_names:
        return f"class {int(cls)} is not one of the {count(n_names, 'name')} (0..{n_names - 1})"
    if box:
        cx, cy, w, h = values[1:5]
        if w <= 0 or h <= 0:
            return f"the box's {'width' if w <= 0 else 'height'} {w if w <= 0 else h:g} is not positive"
        corners = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    else:
        xs, ys = values[1::2], values[2::2]
        corners = [min(xs), min(ys), max(xs), max(ys)]
        if corners[2] <= corners[0] or corners[3] <= corners[1]:
            return f"the polygon's box has no {'width' if corners[2] <= corners[0] else 'height'}"
    low, high = min(corners), max(corners)
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        what = "box" if box else "polygon"
        return (f"the {what} reaches {low if low < -TOLERANCE else high:g}, outside the image ([0, 1] as fractions "
                f"of its width and height, with {TOLERANCE:g} of tolerance)")
    x0, y0, x1, y1 = corners  # clipped to the image as it is letterboxed (Letterbox.to_input)
    return int(cls), ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)


def _count_problem(n: int, kpt_shape: tuple[int, int] | None) -> str:
    if kpt_shape is not None:
        k, d = kpt_shape
        return (f"{count(n, 'number')}; a pose label is {5 + k * d} (class cx cy w h, then {k}×{d} keypoint "
                f"numbers, as kpt_shape: [{k}, {d}] says)")
    text = f"{count(n, 'number')}; a box is 5 (class cx cy w h) and a polygon an odd number from 7 (class x1 y1 ...)"
    if n == 4:
        text += " (the class left out?)"
    elif n == 6:
        text += "; a sixth number is a prediction's confidence, which a label has not"
    return text


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class YoloSplit:
    """A split as a model sees it: ``images`` uint8 (N, C, H, W) letterboxed (a read-only memory map), ``boxes``
    their objects in the input's pixels (``xyxy``), ``files`` the N images kept (unreadable ones left out), in
    order, and ``sizes`` int64 (N, 2) each image's upright ``(width, height)`` in its file."""

    images: np.ndarray
    boxes: Boxes
    files: tuple[YoloFile, ...]
    sizes: np.ndarray

    def letterbox(self, i: int) -> Letterbox:
        """Where image ``i`` went in the input: its :meth:`Letterbox.to_image` gives boxes in the file's pixels."""
        w, h = self.sizes[i]
        return letterbox(int(w), int(h), self.images.shape[1:])


def cache_folder() -> Path:
    """Where decoded YOLO folders are kept: ``<cnncli cache>/yolo``."""
    return cache_dir() / "yolo"


def load(dataset: YoloDataset, split: str, shape: Sequence[int],
         progress: Progress | None = None) -> tuple[np.ndarray, Boxes]:
    """One split: images uint8 (N, C, H, W) letterboxed to ``shape`` (a read-only memory map) and their
    :class:`~cnncli.engine.boxes.Boxes` in the input's pixels; see :func:`load_split`."""
    part = load_split(dataset, split, shape, progress)
    return part.images, part.boxes


def load_split(dataset: YoloDataset, split: str, shape: Sequence[int],
               progress: Progress | None = None) -> YoloSplit:
    """One split with its files and sizes (:class:`YoloSplit`). ``shape`` (C, H, W), C 1 (grey) or 3 (RGB).

    The labels are checked (all of them, before any image is decoded), then the images decoded into the cache
    unless they are there already; ``progress(done, total)`` is called while decoding, as for image folders.
    Unreadable images and repeated label lines give a :class:`DataWarning`, on every load.
    """
    files = dataset.files(split)
    split = _check_split(split)
    shape = folder.check_shape(shape, "a YOLO folder's model input")
    if not any(f.labelled for f in files):
        raise DataError(f"no image of the {split} split of {dataset.yaml} has a label file (the first, "
                        f"{files[0].name}, would have {files[0].label_name}: the last images/ folder of its path "
                        "becomes labels/, its suffix .txt); put the labels there, or an empty label file for each "
                        "image without objects")
    cache = cache_folder()
    slot, stem = _stems(dataset, split, shape, files)
    npy, record = cache / f"{stem}.npy", cache / f"{stem}.json"
    npz = cache / f"{stem}-{_labels_key(dataset, files)}.npz"
    names = [f.name for f in files]
    decoded = _open_images(npy, record, names, shape)
    kept_boxes = _open_boxes(npz, decoded, len(dataset.names), shape) if decoded is not None else None
    labels = _read_labels(dataset, split, files) if kept_boxes is None else None
    if decoded is None:
        folder.make_cache(cache, dataset.yaml)
        folder.remove_stale(cache, slot, keep=stem)
        _decode(dataset, split, files, shape, cache, stem, progress)
        decoded = _open_images(npy, record, names, shape)
        if decoded is None:  # pragma: no cover - written and read back by this very process
            raise UsageError(f"the decoded images of {dataset.yaml} in {cache} could not be read back")
    images, skipped, sizes = decoded
    out = {s["file"] for s in skipped}
    kept = tuple(f for f in files if f.name not in out)
    if kept_boxes is None:
        assert labels is not None
        kept_boxes = _boxes(files, labels, out, sizes, shape)
        _save_boxes(npz, kept_boxes, cache, stem)
    boxes, dropped = kept_boxes
    if skipped:
        warnings.warn(
            f"{len(skipped)} of {count(len(files), f'{split} image')} of {dataset.yaml} could not be read and "
            f"{'is' if len(skipped) == 1 else 'are'} left out with their labels: {folder.listing(skipped)}. Fix or "
            "delete them; the split is decoded again when it changes.", DataWarning, stacklevel=2)
    if dropped:
        warnings.warn(f"{dropped} in the {split} label files of {dataset.yaml}: each object is counted once",
                      DataWarning, stacklevel=2)
    return YoloSplit(images, boxes, kept, sizes)


def statistics(dataset: YoloDataset, shape: Sequence[int],
               progress: Progress | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (pixels scaled to [0, 1]) of the letterboxed training images,
    padding included (it is what the model sees), for normalising: :func:`cnncli.data.folder.pixel_stats`."""
    images, _ = load(dataset, "train", shape, progress)
    return folder.pixel_stats(images)


def _check_split(split: str) -> str:
    key = str(split).strip().lower()
    if key not in SPLITS:
        raise UsageError(f"unknown split {split!r} of a YOLO folder: {', '.join(map(repr, SPLITS))}")
    return key


def _stems(dataset: YoloDataset, split: str, shape: tuple[int, int, int],
           files: Sequence[YoloFile]) -> tuple[str, str]:
    """(slot, slot-content) of a split's decoded images: see the module docstring."""
    extras.require("images", "reading the images of a YOLO folder (PNG, JPEG)")
    import PIL

    slot = folder.digest({"yolo": str(dataset.yaml), "split": split, "shape": list(shape)})
    content = folder.digest({"format": _IMAGES_FORMAT, "decoder": folder.DECODER, "pillow": PIL.__version__,
                             "files": [[str(f.path), f.size, f.mtime_ns] for f in files]})
    return slot, f"{slot}-{content}"


def _labels_key(dataset: YoloDataset, files: Sequence[YoloFile]) -> str:
    return folder.digest({"format": _LABELS_FORMAT, "names": len(dataset.names),
                          "kpt_shape": list(dataset.kpt_shape or ()),
                          "labels": [[str(f.label), f.label_size, f.label_mtime_ns] for f in files]})


def _decode(dataset: YoloDataset, split: str, files: Sequence[YoloFile], shape: tuple[int, int, int],
            cache: Path, stem: str, progress: Progress | None) -> None:
    sizes: list[list[int]] = []

    def decode(path: Path) -> np.ndarray:
        pixels, box = read_letterboxed(path, shape)
        sizes.append([box.width, box.height])
        return pixels

    def finish(skipped: list[dict[str, str]]) -> dict:
        if len(skipped) == len(files):
            raise DataError(f"no image of the {split} split of {dataset.yaml} could be read: "
                            + folder.listing(skipped))
        return {"yaml": str(dataset.yaml), "split": split, "sizes": sizes}

    folder.decode_to_cache(dataset.root, [(f.name, f.path) for f in files], decode, shape, cache, stem, progress,
                           finish)


def _open_images(npy: Path, record: Path, names: Sequence[str],
                 shape: tuple[int, int, int]) -> tuple[np.ndarray, list[dict[str, str]], np.ndarray] | None:
    """The cached images, the files left out and the sizes (N, 2), or None."""
    cached = folder.open_cached(npy, record, names, shape)
    if cached is None:
        return None
    images, entry = cached
    try:
        sizes = np.array(entry["sizes"], dtype=np.int64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError):
        return None
    if len(sizes) != len(images) or (sizes.size and sizes.min() < 1):
        return None
    return images, entry["skipped"], sizes


def _boxes(files: Sequence[YoloFile], labels: Sequence[_Labels], out: set[str], sizes: np.ndarray,
           shape: tuple[int, int, int]) -> tuple[Boxes, str]:
    """The kept images' boxes in the input's pixels, and what was dropped, in words ("" for nothing)."""
    per_image = []
    kept = [lab for f, lab in zip(files, labels) if f.name not in out]
    for lab, (w, h) in zip(kept, sizes):
        box = letterbox(int(w), int(h), shape)
        per_image.append((box.to_input(from_yolo(lab.cxcywh, int(w), int(h))), lab.classes))
    repeated = [(f, lab.duplicates) for f, lab in zip(files, labels) if lab.duplicates]
    dropped = ""
    if repeated:
        total = sum(n for _, n in repeated)
        dropped = (f"{count(total, 'repeated line')} dropped ("
                   + _shown([f"{f.label_name}: {n}" for f, n in repeated]) + ")")
    return Boxes.of_images(per_image), dropped


def _save_boxes(npz: Path, kept: tuple[Boxes, str], cache: Path, stem: str) -> None:
    boxes, dropped = kept
    try:
        write_atomic(npz, lambda out: np.savez(out, xyxy=boxes.xyxy, classes=boxes.classes, offsets=boxes.offsets,
                                               dropped=np.array(dropped)))
        for old in cache.glob(f"{stem}-*.npz"):
            if old.name != npz.name:
                old.unlink()
    except OSError as e:
        raise UsageError(f"cannot write the boxes of {stem} to the cache folder {cache}: {e.strerror or e} "
                         "(point XDG_CACHE_HOME elsewhere, or free some space)") from None


def _open_boxes(npz: Path, decoded: tuple[np.ndarray, list, np.ndarray], n_names: int,
                shape: tuple[int, int, int]) -> tuple[Boxes, str] | None:
    """The cached boxes of the images ``decoded``, or None when there are none consistent with them."""
    try:
        with np.load(npz, allow_pickle=False) as z:
            boxes = Boxes(z["xyxy"], z["classes"], z["offsets"])
            dropped = str(z["dropped"])
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    _, h, w = shape
    classes_fit = len(boxes.classes) == 0 or 0 <= boxes.classes.min() <= boxes.classes.max() < n_names
    inside = np.all(np.isfinite(boxes.xyxy)) and np.all(boxes.xyxy >= -1e-3) and \
        np.all(boxes.xyxy <= np.array([w, h, w, h]) + 1e-3)
    if len(boxes) != len(decoded[0]) or not classes_fit or not inside:
        return None
    return boxes, dropped


def _shown(items: Sequence[str]) -> str:
    return listed(items, _SHOWN)
