"""Datasets: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, found on disk or downloaded, verified, decoded.

(The datasets of boxes are :mod:`.mnist_detect`, drawn from MNIST's files, and :mod:`.yolo`, a folder of the
user's in the YOLO layout; image folders are :mod:`.folder`; :mod:`.source` opens any of them for a run.)

Every dataset loads the same way (:func:`load`): images uint8 (N, C, H, W)
(MNIST's 1×28×28, CIFAR's 3×32×32), labels int64 (N,), for the ``train`` or
``test`` split. The files are

* MNIST, Fashion-MNIST: four IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``), each gzip-compressed (``NAME.gz``) or plain
  (``NAME``), each checked against the SHA-256 of its *uncompressed* bytes (so
  a re-compressed copy of the official files is accepted) (:mod:`.idx`);
* CIFAR-10 (``cifar10``), CIFAR-100 (``cifar100``: the 100 fine classes;
  ``cifar100-coarse``: the 20 superclasses, from the same files): the
  authors' binary archive ``cifar-10-binary.tar.gz`` or
  ``cifar-100-binary.tar.gz``, checked by its size, MD5 and SHA-256, then
  extracted safely into the cache; or its extracted folder
  (``cifar-10-batches-bin/``, ``cifar-100-binary/``) (:mod:`.cifar`).

They are looked for, in this order, in

1. the ``data_dir`` argument (the CLI's ``--data-dir``): ``DIR/<dataset>/`` then ``DIR/``;
2. the environment variable ``CNNCLI_DATA``: ``$CNNCLI_DATA/<dataset>/`` then ``$CNNCLI_DATA/``;
3. the user cache ``$XDG_CACHE_HOME/cnncli/<dataset>/`` (default ``~/.cache/cnncli/<dataset>/``);
4. system copies (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist``, from
   Debian's ``dataset-fashion-mnist`` package);

(``<dataset>`` is ``cifar100`` for both CIFAR-100 datasets) and when they are
in none of them they are downloaded into the user cache from the dataset's
public mirrors, tried in turn. ``CNNCLI_MIRRORS`` (comma-separated base URLs;
``{dataset}`` in one is replaced by the dataset's folder name) replaces the
built-in mirror list, and ``CNNCLI_OFFLINE=1`` forbids downloading at all.
Offline, copy the files (for CIFAR, the archive as published) into one of the
places above; the error that reports them missing lists every place and the
file names.

After verification every file is parsed strictly (IDX: magic number,
dimensions, byte count; CIFAR: a whole number of records, the official count,
class names), labels are checked to be in range, and images and labels must
agree in number. Anything wrong raises :class:`~cnncli.errors.DataError`
naming the file, the fault and the remedy.

Downloads stream into a temporary file in the cache directory and are verified
before an atomic :func:`os.replace` gives them their final name (or, for an
archive, before it is extracted into a temporary folder that is then renamed
into place), so nothing under a final name is ever half-written, even after
Ctrl-C. Decoded arrays are cached as ``.npy`` files in ``<cache>/<dataset>/decoded/``
together with a small JSON record of the source files' path, size,
modification time and verified SHA-256 (:mod:`.decoded`); while those match,
a load reads the ``.npy`` files and skips decompressing, hashing and parsing.

Progress of downloads is reported through an optional callback, see
:class:`DownloadEvent`. Anything worth a user's attention that is not an error
(a file whose checksum is not known, a CIFAR folder extracted by hand) is a
:class:`DataWarning`.

The package, top-down: :mod:`.registry` (what each dataset is), :mod:`.places`
(where its files are looked for), :mod:`.fetch` (downloading one file),
:mod:`.idx` and :mod:`.cifar` (the two formats), :mod:`.decoded` (the cache of
decoded arrays).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnncli.errors import UsageError

from . import cifar, decoded, fetch, idx, places, registry  # noqa: F401  (the submodules, for tests and tools)
from .fetch import DownloadEvent, ProgressCallback
from .idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_idx_file
from .places import Place, cache_dir, mirrors, search_dirs
from .registry import DATASETS, SPLITS, Archive, DatasetInfo, DataWarning, check_split, class_names, get

__all__ = [
    "DATASETS",
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "SPLITS",
    "Archive",
    "DataWarning",
    "DatasetInfo",
    "DownloadEvent",
    "Place",
    "ProgressCallback",
    "cache_dir",
    "class_names",
    "get",
    "load",
    "locate",
    "mirrors",
    "normalise",
    "parse_idx",
    "read_idx_file",
    "scale",
    "search_dirs",
    "train_val_split",
]


def locate(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    download: bool = True,
) -> dict[str, Path]:
    """Paths of ``split``'s files, downloading what is missing.

    Returns ``{"images": path, "labels": path}`` for an IDX dataset, and
    ``{file name: path}`` of the split's data files for CIFAR. Files are
    searched for in :func:`search_dirs` order; a missing one is downloaded into
    :func:`cache_dir` unless ``download`` is false or ``CNNCLI_OFFLINE`` is set.
    A CIFAR archive is verified and extracted here; other files found are not
    verified here (:func:`load` does that).
    """
    info = get(name)
    split = check_split(info, split)
    fmt = idx if info.archive is None else cifar
    return fmt.locate(info, split, data_dir, progress, download)


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a dataset: images uint8 (N, C, H, W) and labels int64 (N,).

    ``name`` is a key of :data:`DATASETS`, ``split`` is ``"train"`` or ``"test"``,
    ``data_dir`` the CLI's ``--data-dir`` (searched first), ``progress`` an optional
    :data:`ProgressCallback` for downloads. Raises :class:`DataError` when the
    files cannot be found or fetched, or are not the genuine, complete files.
    The arrays are fresh and writable.
    """
    info = get(name)
    split = check_split(info, split)
    fmt = idx if info.archive is None else cifar
    return fmt.load_split(info, split, data_dir, progress)


# --------------------------------------------------------------------------- preparing


def train_val_split(n: int, val: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into sorted (train indices, validation indices), int64.

    ``val`` is a fraction in [0, 1) when a float (rounded, at least one example
    when positive) or a count in [0, n) when an int. The same ``seed`` always
    gives the same split. Raises :class:`UsageError` for an impossible ``val``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UsageError(f"Cannot split {n!r} examples: need a positive whole number.")
    n = int(n)
    if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)):
        raise UsageError(f"Validation size {val!r} must be a fraction in [0, 1) or a count.")
    if isinstance(val, (float, np.floating)):
        if not 0.0 <= float(val) < 1.0:
            raise UsageError(
                f"Validation fraction {val} must be at least 0 and less than 1 "
                "(or give a whole number of examples)."
            )
        count = int(round(n * float(val)))
        if val > 0:
            count = max(count, 1)
    else:
        count = int(val)
        if count < 0:
            raise UsageError(f"Validation count {count} must not be negative.")
    if count >= n:
        raise UsageError(
            f"A validation set of {count} leaves no training examples out of {n}; use fewer."
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[count:]).astype(np.int64), np.sort(order[:count]).astype(np.int64)


def normalise(
    images: np.ndarray, dtype: np.dtype | type = np.float32, dataset: str = "mnist"
) -> np.ndarray:
    """Scale uint8 pixels to zero mean, unit variance per channel with ``dataset``'s statistics.

    Takes (N, C, H, W) with the dataset's C channels; a one-channel dataset also
    takes (N, H, W) or one (H, W) image. Returns a new (N, C, H, W) array of
    float ``dtype``: ``(pixel / 255 - mean[c]) / std[c]``.
    """
    info = get(dataset)
    channels = len(info.mean)
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise UsageError(
            f"normalise expects raw uint8 pixels 0..255, got {array.dtype} "
            "(already normalised?)."
        )
    if channels == 1 and array.ndim == 2:
        array = array[None, None]
    elif channels == 1 and array.ndim == 3:
        array = array[:, None]
    elif not (array.ndim == 4 and array.shape[1] == channels):
        grey = " (or (N, H, W) for a one-channel dataset)" if channels == 1 else ""
        raise UsageError(
            f"normalise expects {info.title} images shaped (N, {channels}, H, W){grey}, got {array.shape}."
        )
    return scale(array, dtype, info.mean, info.std)


def scale(images: np.ndarray, dtype, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 (N, C, H, W) → float ``dtype`` (N, C, H, W): ``(pixel / 255 - mean[c]) / std[c]`` per channel."""
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise UsageError(f"normalise needs a floating dtype, got {dt}.")
    if images.ndim != 4 or images.shape[1] != len(mean) or len(std) != len(mean):
        raise UsageError(f"{len(mean)}-channel statistics cannot normalise images shaped {images.shape}")
    out = images.astype(dt)
    for c, (m, s) in enumerate(zip(mean, std)):
        plane = out[:, c]
        plane *= dt.type(1.0 / (255.0 * s))
        plane -= dt.type(m / s)
    return out
