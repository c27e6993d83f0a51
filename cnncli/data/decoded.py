"""The decoded cache: a split's arrays kept as ``.npy`` files, valid while their source files are unchanged.

A split decoded once is saved as ``<cache>/<dataset>/decoded/<split>-images.npy``
and ``<split>-labels.npy`` (``<dataset>-<split>-...`` where datasets share a folder) with a JSON record of each source file's path, size,
modification time and verified SHA-256. A later load whose sources still match
that record (and whose expected checksums are the recorded ones) reads the
``.npy`` files and skips decompressing, hashing and parsing. Anything that does
not match, or cannot be read, is ignored and the split is decoded again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cnncli.atomic import write_atomic, write_text_atomic

from .places import cache_dir
from .registry import DatasetInfo

_FORMAT = 2  # 2: images (N, C, H, W)


def identity(path: Path) -> dict[str, object]:
    """What tells a file apart from its later versions without reading it: resolved path, size, mtime (ns)."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def paths(info: DatasetInfo, split: str) -> tuple[Path, Path, Path]:
    """The images ``.npy``, labels ``.npy`` and JSON record of one split."""
    folder = cache_dir(info.name) / "decoded"
    # Datasets sharing a folder (cifar100, cifar100-coarse) differ in their labels.
    stem = split if info.directory == info.name else f"{info.name}-{split}"
    return (
        folder / f"{stem}-images.npy",
        folder / f"{stem}-labels.npy",
        folder / f"{stem}.json",
    )


def load(
    info: DatasetInfo,
    split: str,
    sources: Mapping[str, Path],
    expected: Mapping[str, str | None],
) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or ``None`` when there are none matching ``sources``.

    ``expected`` maps each source's key to the SHA-256 it must have had when it
    was decoded, or to ``None`` when any verified value will do.
    """
    images_npy, labels_npy, record_path = paths(info, split)
    try:
        record = json.loads(record_path.read_text())
        if record.get("format") != _FORMAT or set(record["sources"]) != set(sources):
            return None
        for key, path in sources.items():
            entry = record["sources"][key]
            if {k: entry.get(k) for k in ("path", "size", "mtime_ns")} != identity(path):
                return None
            if expected.get(key) is not None and entry.get("sha256") != expected[key]:
                return None
        for kind, npy in (("images", images_npy), ("labels", labels_npy)):
            st = npy.stat()
            if record["arrays"][kind] != {"size": st.st_size, "mtime_ns": st.st_mtime_ns}:
                return None
        images = np.load(images_npy, allow_pickle=False)
        labels = np.load(labels_npy, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1:] != tuple(info.image_shape)
        or labels.dtype != np.int64
        or labels.shape != (images.shape[0],)
        or (labels.size and (labels.min() < 0 or labels.max() >= len(info.classes)))
    ):
        return None
    return images, labels


def _atomic_save(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda out: np.save(out, array, allow_pickle=False))


def save(
    info: DatasetInfo,
    split: str,
    sources: Mapping[str, Path],
    digests: Mapping[str, str],
    images: np.ndarray,
    labels: np.ndarray,
) -> None:
    """Cache decoded arrays; best effort (an unwritable cache only costs speed)."""
    images_npy, labels_npy, record_path = paths(info, split)
    try:
        images_npy.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(images_npy, images)
        _atomic_save(labels_npy, labels)
        arrays = {}
        for kind, npy in (("images", images_npy), ("labels", labels_npy)):
            st = npy.stat()
            arrays[kind] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        record = {
            "format": _FORMAT,
            "sources": {key: {**identity(path), "sha256": digests[key]} for key, path in sources.items()},
            "arrays": arrays,
        }
        write_text_atomic(record_path, json.dumps(record, indent=1))
    except OSError:
        pass
