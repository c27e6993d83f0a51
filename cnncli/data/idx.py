"""MNIST's IDX files: found or downloaded one by one, verified by the SHA-256 of their uncompressed bytes, parsed.

A split is two files, images (magic 2051: count, rows, columns, then the
pixels) and labels (magic 2049: count, then one byte per label), each plain or
gzip-compressed (``NAME`` or ``NAME.gz``, told apart by content).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from cnncli.errors import DataError
from cnncli.words import count

from . import decoded
from .fetch import AllMirrorsFailed, MirrorFailed, ProgressCallback, fetch
from .places import ENV_DATA, ENV_MIRRORS, ENV_OFFLINE, Place, cache_dir, not_found, offline, search_dirs
from .registry import DatasetInfo, DataWarning

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)

Kind = Literal["images", "labels"]


# --------------------------------------------------------------------------- parsing


def _check_header(data: bytes, kind: Kind, source: str, image_shape: tuple[int, int]) -> tuple[int, ...]:
    """Validate an IDX header; return its dimensions. ``data`` may be just the head."""
    expected = IMAGES_MAGIC if kind == "images" else LABELS_MAGIC
    if len(data) < 4:
        raise DataError(
            f"{source}: only {len(data)} bytes long, too short even for an IDX header; the "
            "file is truncated or empty. Delete it and download or copy it again."
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != expected:
        other = "labels" if kind == "images" else "images"
        if magic == (LABELS_MAGIC if kind == "images" else IMAGES_MAGIC):
            hint = f"it is an IDX {other} file, not an {kind} file (are two files' names swapped?)"
        elif data[:1] in (b"<", b"{"):
            hint = "it looks like a web page or JSON, not IDX data (a failed download saved as the file?)"
        else:
            hint = "this is not an IDX file of unsigned bytes"
        raise DataError(
            f"{source}: wrong magic number {magic} (0x{magic:08x}); an IDX {kind} file starts "
            f"with {expected} (0x{expected:08x}): {hint}. Replace it with the official file."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{source}: truncated inside its {header}-byte IDX header ({len(data)} bytes). "
            "Delete it and download or copy it again."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if kind == "images" and dims[1:] != tuple(image_shape):
        raise DataError(
            f"{source}: images are {dims[1]}x{dims[2]} pixels, expected "
            f"{image_shape[0]}x{image_shape[1]}. This is not a file of this dataset."
        )
    return dims


def parse_idx(
    data: bytes,
    kind: Kind,
    source: str = "<bytes>",
    image_shape: tuple[int, int] = (28, 28),
) -> np.ndarray:
    """Decode uncompressed IDX bytes: images (N, rows, cols) or labels (N,), uint8.

    Checks the magic number (2051 images, 2049 labels), the image size, and that
    the byte count is exactly what the header declares. ``source`` names the
    file in error messages. The array is read-only and shares ``data``'s memory.
    """
    dims = _check_header(data, kind, source, image_shape)
    header = 4 + 4 * len(dims)
    want = header + int(np.prod(dims, dtype=np.int64))
    if len(data) < want:
        what = f"{count(dims[0], 'image')} of {dims[1]}x{dims[2]}" if kind == "images" else count(dims[0], "label")
        raise DataError(
            f"{source}: truncated: its header declares {what}, {want} bytes in all, but it "
            f"holds only {len(data)} bytes ({want - len(data)} missing). The download or copy "
            "was cut short: delete the file and download or copy it again."
        )
    if len(data) > want:
        raise DataError(
            f"{source}: {len(data) - want} unexpected bytes after the {dims[0]} items its header "
            "declares; this is not a valid IDX file. Replace it with the official file."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_uncompressed(path: Path) -> bytes:
    try:
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                raw.seek(0)
                return raw.read()
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) as stream:
                return stream.read()
    except EOFError as exc:
        raise DataError(
            f"{path}: the gzip data ends early ({exc}); the file is truncated. Delete it and "
            "download or copy it again."
        ) from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path}: corrupt gzip data ({exc}). Delete it and download or copy it again."
        ) from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}.") from exc


def read_idx_file(
    path: str | os.PathLike[str],
    kind: Kind,
    expected_sha256: str | None = None,
    image_shape: tuple[int, int] = (28, 28),
) -> tuple[np.ndarray, str]:
    """Read, verify and decode one IDX file (gzipped or plain, told apart by content).

    Returns the uint8 array and the SHA-256 of the uncompressed bytes. The IDX
    structure is checked first (a truncated file is reported as such), then the
    checksum against ``expected_sha256`` when one is given.
    """
    path = Path(path)
    data = _read_uncompressed(path)
    array = parse_idx(data, kind, str(path), image_shape)
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise DataError(
            f"{path}: checksum mismatch: the SHA-256 of its uncompressed contents is {digest}, "
            f"expected {expected_sha256}. The file is corrupt or is not the official release. "
            "Delete it (cnncli then looks elsewhere or downloads a fresh copy) or replace it "
            "with a good copy."
        )
    return array, digest


def _check_pair(
    info: DatasetInfo, images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path
) -> None:
    n_classes = len(info.classes)
    if labels.size and int(labels.max()) >= n_classes:
        bad = np.flatnonzero(labels >= n_classes)
        raise DataError(
            f"{labels_path}: {bad.size} label(s) out of range 0..{n_classes - 1}, the first is "
            f"{int(labels[bad[0]])} at index {int(bad[0])}. The file is corrupt or belongs to "
            "another dataset; replace it with the official file."
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {count(images.shape[0], 'image')} but {labels_path} holds "
            f"{count(labels.shape[0], 'label')}; they must agree. One of them is from another dataset "
            "or split; replace it with the matching official file."
        )


# --------------------------------------------------------------------------- downloading


def _digest_uncompressed(path: Path) -> tuple[bool, str, bytes]:
    """(is gzip, SHA-256 of the uncompressed bytes, their first 64 bytes), streaming."""
    digest = hashlib.sha256()
    head = b""
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if is_gzip else raw
        while block := stream.read(1 << 20):
            if len(head) < 64:
                head += block[: 64 - len(head)]
            digest.update(block)
    return is_gzip, digest.hexdigest(), head


def _installer(info: DatasetInfo, filename: str, dest: Path):
    """Verify a downloaded IDX file and rename it to ``NAME.gz`` (or ``NAME`` when not compressed)."""
    expected = info.sha256.get(filename)

    def install(tmp: Path, url: str) -> Path:
        try:
            is_gzip, digest, data_head = _digest_uncompressed(tmp)
        except (EOFError, OSError, zlib.error) as exc:
            raise MirrorFailed(f"not a complete gzip file ({exc})") from exc
        if expected is None:
            kind: Kind = "images" if "images" in filename else "labels"
            try:
                _check_header(data_head, kind, url, info.image_shape[1:])
            except DataError as exc:
                raise MirrorFailed(str(exc)) from exc
        elif digest != expected:
            raise MirrorFailed(
                f"SHA-256 of the uncompressed file is {digest}, expected {expected} "
                "(corrupt or not the official file)"
            )
        final = dest / (filename + (".gz" if is_gzip else ""))
        os.replace(tmp, final)
        return final

    return install


# --------------------------------------------------------------------------- locating


def _find_in(places: Sequence[Place], filename: str) -> Path | None:
    for place in places:
        for candidate in (place.path / filename, place.path / (filename + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def _how_to_supply(info: DatasetInfo) -> str:
    names = ", ".join(info.files)
    return (
        f"To supply the files (each plain or gzipped, as NAME or NAME.gz: {names}), do one of:\n"
        f"  - pass --data-dir DIR, with the files in DIR/{info.directory}/ or in DIR/ itself;\n"
        f"  - set {ENV_DATA}=DIR in the environment, DIR laid out the same way;\n"
        f"  - copy them into {cache_dir(info.name)}/;\n"
        f"  - or let cnncli download them (needs network access; {ENV_MIRRORS}=URL,... "
        "sets the mirrors)."
    )


def _missing(info: DatasetInfo, names: Sequence[str], places: Sequence[Place], note: str) -> DataError:
    what = f"{', '.join(names)} (looked for NAME and NAME.gz)"
    return not_found(info, what, places, note, _how_to_supply(info))


def locate(
    info: DatasetInfo,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
    download: bool,
) -> dict[str, Path]:
    """Paths of a split's ``"images"`` and ``"labels"`` files, downloading what is missing."""
    images_file, labels_file = info.splits[split]
    places = search_dirs(info.name, data_dir)
    found: dict[str, Path | None] = {
        "images": _find_in(places, images_file),
        "labels": _find_in(places, labels_file),
    }
    wanted = {"images": images_file, "labels": labels_file}
    missing = [kind for kind, path in found.items() if path is None]
    if not missing:
        return found  # type: ignore[return-value]
    if not download:
        raise _missing(info, [wanted[k] for k in missing], places, "Downloading was not requested.")
    if offline():
        note = f"Downloading is disabled ({ENV_OFFLINE} is set)."
        raise _missing(info, [wanted[k] for k in missing], places, note)
    dest = cache_dir(info.name)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        note = f"Could not create the cache directory to download into: {exc}."
        raise _missing(info, [wanted[k] for k in missing], places, note) from exc
    for i, kind in enumerate(missing):
        try:
            found[kind] = fetch(info, wanted[kind] + ".gz", dest, _installer(info, wanted[kind], dest), progress)
        except AllMirrorsFailed as failure:
            tried = "\n".join(f"  - {url}: {reason}" for url, reason in failure.attempts)
            note = f"Downloading {failure.filename} failed at every mirror:\n{tried}"
            still_missing = [wanted[k] for k in missing[i:]]
            raise _missing(info, still_missing, places, note) from None
    return found  # type: ignore[return-value]


# --------------------------------------------------------------------------- loading


def load_split(
    info: DatasetInfo,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One split, verified and decoded: images uint8 (N, 1, rows, cols), labels int64 (N,)."""
    sources = locate(info, split, data_dir, progress, download=True)
    files = dict(zip(("images", "labels"), info.splits[split]))
    for kind, filename in files.items():
        if info.sha256.get(filename) is None:
            warnings.warn(
                f"{sources[kind]}: no known SHA-256 for {info.title} {filename}; "
                "its contents are checked for structure only, not verified.",
                DataWarning,
                stacklevel=3,
            )
    expected = {kind: info.sha256.get(filename) for kind, filename in files.items()}
    cached = decoded.load(info, split, sources, expected)
    if cached is not None:
        return cached
    rows_cols = info.image_shape[1:]
    images, image_digest = read_idx_file(sources["images"], "images", expected["images"], rows_cols)
    labels_u8, label_digest = read_idx_file(sources["labels"], "labels", expected["labels"], rows_cols)
    _check_pair(info, images, labels_u8, sources["images"], sources["labels"])
    images = images[:, None].copy()  # IDX images are grey: one channel
    labels = labels_u8.astype(np.int64)
    decoded.save(info, split, sources, {"images": image_digest, "labels": label_digest}, images, labels)
    return images, labels
