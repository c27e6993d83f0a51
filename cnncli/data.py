"""Datasets: MNIST and Fashion-MNIST, found on disk or downloaded, verified, decoded.

Each dataset is four IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``), each either gzip-compressed (``NAME.gz``) or plain
(``NAME``). A file is looked for, in this order, in

1. the ``data_dir`` argument (the CLI's ``--data-dir``): ``DIR/<dataset>/`` then ``DIR/``;
2. the environment variable ``CNNCLI_DATA``: ``$CNNCLI_DATA/<dataset>/`` then ``$CNNCLI_DATA/``;
3. the user cache ``$XDG_CACHE_HOME/cnncli/<dataset>/`` (default ``~/.cache/cnncli/<dataset>/``);
4. system copies (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist``, from
   Debian's ``dataset-fashion-mnist`` package);

and when it is in none of them it is downloaded into the user cache from the
dataset's public mirrors, tried in turn. ``CNNCLI_MIRRORS`` (comma-separated
base URLs; ``{dataset}`` in one is replaced by the dataset name) replaces the
built-in mirror list, and ``CNNCLI_OFFLINE=1`` forbids downloading at all.

Every file is checked against the SHA-256 of its *uncompressed* bytes in
:data:`DATASETS` (so a re-compressed copy of the official files is accepted),
then parsed strictly: magic number, dimensions, byte count, label range, and
that images and labels agree in number. Anything wrong raises
:class:`~cnncli.errors.DataError` naming the file, the fault and the remedy.

Downloads stream into a temporary file in the cache directory and are verified
before an atomic :func:`os.replace` gives them their final name, so a file under
its final name is always complete. Decoded arrays are cached as ``.npy`` files in
``<cache>/<dataset>/decoded/`` together with a small JSON record of the source
files' path, size, modification time and verified SHA-256; while those match,
a load reads the ``.npy`` files and skips decompressing and hashing.

Progress of downloads is reported through an optional callback, see
:class:`DownloadEvent`. Anything worth a user's attention that is not an error
(a file whose checksum is not known) is a :class:`DataWarning`.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from . import __version__
from .atomic import write_atomic, write_text_atomic
from .errors import DataError, UsageError
from .model.kinds import fmt_shape

__all__ = [
    "DATASETS",
    "SPLITS",
    "DataWarning",
    "DatasetInfo",
    "DownloadEvent",
    "Place",
    "ProgressCallback",
    "cache_dir",
    "check_model_fits",
    "class_names",
    "get",
    "load",
    "locate",
    "mirrors",
    "normalise",
    "parse_idx",
    "read_idx_file",
    "search_dirs",
    "train_val_split",
]

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
SPLITS: tuple[str, ...] = ("train", "test")

#: Seconds a download may wait on connecting or on any single read.
DOWNLOAD_TIMEOUT = 30.0
_CHUNK = 1 << 16
_DECODED_FORMAT = 1
_ENV_DATA = "CNNCLI_DATA"
_ENV_MIRRORS = "CNNCLI_MIRRORS"
_ENV_OFFLINE = "CNNCLI_OFFLINE"

Kind = Literal["images", "labels"]


class DataWarning(UserWarning):
    """Something about the data a user should know that does not stop the run."""


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetInfo:
    """Everything cnncli knows about one dataset.

    ``sha256`` maps each file's name (without ``.gz``) to the SHA-256 of its
    uncompressed bytes, or to ``None`` when it is not known (the file is then
    only checked structurally, with a :class:`DataWarning`). ``mean`` and ``std``
    are of the training pixels scaled to [0, 1].
    """

    name: str
    title: str
    splits: Mapping[str, tuple[str, str]]  # split -> (images file, labels file)
    sha256: Mapping[str, str | None]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    mean: float
    std: float
    image_shape: tuple[int, int] = (28, 28)
    system_dirs: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """All of the dataset's file names, without ``.gz``."""
        return tuple(f for pair in self.splits.values() for f in pair)


_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: The datasets cnncli can load, by name.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        title="MNIST",
        splits=_IDX_SPLITS,
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        classes=tuple(str(d) for d in range(10)),
        mean=0.1307,  # 0.13066047627...
        std=0.3081,  # 0.30810780385...
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        title="Fashion-MNIST",
        splits=_IDX_SPLITS,
        # Computed from Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1);
        # their MD5s equal the MD5s of the uncompressed files published upstream.
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=0.2860,  # 0.28604059698...
        std=0.3530,  # 0.35302424451...
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}

_ALIASES = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist"}


def get(name: str) -> DatasetInfo:
    """The registry record of dataset ``name`` (case and ``_``/``-`` insensitive).

    Raises :class:`DataError` listing the valid names when there is no such dataset.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    try:
        return DATASETS[key]
    except KeyError:
        valid = ", ".join(sorted(DATASETS))
        raise DataError(f"Unknown dataset {name!r}. Valid datasets: {valid}.") from None


def check_model_fits(graph, info: DatasetInfo, name: str) -> None:
    """A model (its inferred graph) must take the dataset's images and give one output per class; else UsageError."""
    want_in = (1, *info.image_shape)
    if tuple(graph.input_shape) != want_in:
        raise UsageError(f"model '{name}' takes {fmt_shape(graph.input_shape)} inputs, but {info.title} "
                         f"images are {fmt_shape(want_in)}")
    classes = len(info.classes)
    if tuple(graph.output_shape) != (classes,):
        raise UsageError(f"model '{name}' outputs {fmt_shape(graph.output_shape)}, but {info.title} "
                         f"has {classes} classes: the last layer needs {classes} units")


def class_names(name: str) -> list[str]:
    """The names of dataset ``name``'s classes, indexed by label."""
    return list(get(name).classes)


def _check_split(info: DatasetInfo, split: str) -> str:
    key = str(split).strip().lower()
    if key not in info.splits:
        valid = ", ".join(info.splits)
        raise DataError(
            f"Unknown split {split!r} of {info.title}. Valid splits: {valid} "
            "(a validation set is carved out of 'train' with a validation fraction)."
        )
    return key


# --------------------------------------------------------------------------- places


@dataclass(frozen=True)
class Place:
    """A directory searched for a dataset's files, and why it is searched."""

    path: Path
    origin: str  # "--data-dir", "CNNCLI_DATA", "cache" or "system"


def cache_dir(name: str | None = None) -> Path:
    """cnncli's user cache, ``$XDG_CACHE_HOME/cnncli`` (default ``~/.cache/cnncli``).

    With a dataset ``name``, that dataset's folder in it (downloads land there).
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    root = root / "cnncli"
    return root / get(name).name if name is not None else root


def search_dirs(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Place]:
    """The directories searched for dataset ``name``'s files, in order."""
    info = get(name)
    places: list[Place] = []
    for root, origin in ((data_dir, "--data-dir"), (os.environ.get(_ENV_DATA) or None, _ENV_DATA)):
        if root is None or str(root) == "":
            continue
        root = Path(root).expanduser()
        places.append(Place(root / info.name, origin))
        places.append(Place(root, origin))
    places.append(Place(cache_dir(info.name), "cache"))
    places.extend(Place(Path(d), "system") for d in info.system_dirs)
    return places


def _find_in(places: Sequence[Place], filename: str) -> Path | None:
    for place in places:
        for candidate in (place.path / filename, place.path / (filename + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def mirrors(name: str) -> list[str]:
    """Base URLs dataset ``name`` is downloaded from, in order (``CNNCLI_MIRRORS`` overrides)."""
    info = get(name)
    env = os.environ.get(_ENV_MIRRORS, "").strip()
    bases = [b.strip() for b in env.split(",") if b.strip()] if env else list(info.mirrors)
    return [b.replace("{dataset}", info.name) for b in bases]


def _offline() -> bool:
    return os.environ.get(_ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------- downloading


@dataclass(frozen=True)
class DownloadEvent:
    """One step of a download, passed to the ``progress`` callback.

    ``status`` is one of

    * ``"start"``: a request to ``url`` for ``filename`` was answered; ``done`` is 0
      and ``total`` the size in bytes, or ``None`` when the server did not say.
      After a failed mirror the same file starts again from 0 at the next one.
    * ``"progress"``: ``done`` bytes of ``total`` have arrived.
    * ``"done"``: the file is verified and in place under its final name.
    * ``"failed"``: this mirror did not work; ``message`` says why. Another mirror
      may follow (with a new ``"start"``), or :func:`load` raises ``DataError``.

    ``filename`` is the name being fetched (``train-images-idx3-ubyte.gz``).
    """

    status: Literal["start", "progress", "done", "failed"]
    filename: str
    url: str
    done: int
    total: int | None
    message: str = ""


#: ``progress(event)``; called from the loading thread, between network reads.
ProgressCallback = Callable[[DownloadEvent], None]


class _MirrorFailed(Exception):
    """One mirror did not deliver a good copy of one file."""


@dataclass
class _AllMirrorsFailed(Exception):
    filename: str
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (url, reason)


def _download(
    info: DatasetInfo, filename: str, dest: Path, progress: ProgressCallback | None
) -> Path:
    """Fetch ``filename`` (no ``.gz``) into ``dest`` from the first mirror that works."""
    bases = mirrors(info.name)
    failure = _AllMirrorsFailed(filename)
    if not bases:
        failure.attempts.append(("(none)", f"no mirrors configured ({_ENV_MIRRORS} is empty)"))
    for base in bases:
        url = base.rstrip("/") + "/" + filename + ".gz"
        try:
            return _download_from(url, info, filename, dest, progress)
        except _MirrorFailed as exc:
            reason = str(exc)
            failure.attempts.append((url, reason))
            if progress is not None:
                progress(DownloadEvent("failed", filename + ".gz", url, 0, None, reason))
    raise failure


def _describe_network_error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    if isinstance(exc, TimeoutError):
        return f"timed out (no data for {DOWNLOAD_TIMEOUT:g} s)"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} more bytes (incomplete read)"
    return f"{type(exc).__name__}: {exc}"


def _download_from(
    url: str,
    info: DatasetInfo,
    filename: str,
    dest: Path,
    progress: ProgressCallback | None,
) -> Path:
    shown = filename + ".gz"
    expected = info.sha256.get(filename)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest)
    except OSError as exc:
        raise DataError(
            f"Cannot write the download of {filename} into {dest}: {exc.strerror or exc}. "
            f"Make that directory writable, or set XDG_CACHE_HOME to a writable place."
        ) from exc
    tmp: Path | None = Path(tmp_name)
    try:
        done, total = 0, None
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": f"cnncli/{__version__}"})
            try:
                # A fresh opener per download reads the proxy settings in force now.
                with urllib.request.build_opener().open(request, timeout=DOWNLOAD_TIMEOUT) as resp:
                    length = resp.headers.get("Content-Length", "")
                    total = int(length) if length.strip().isdigit() else None
                    if progress is not None:
                        progress(DownloadEvent("start", shown, url, 0, total))
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(DownloadEvent("progress", shown, url, done, total))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise _MirrorFailed(_describe_network_error(exc)) from exc
            if total is not None and done != total:
                raise _MirrorFailed(f"connection closed after {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        try:
            is_gzip, digest, data_head = _digest_uncompressed(tmp)
        except (EOFError, OSError, zlib.error) as exc:
            raise _MirrorFailed(f"not a complete gzip file ({exc})") from exc
        if expected is None:
            kind: Kind = "images" if "images" in filename else "labels"
            try:
                _check_header(data_head, kind, f"{url}", info.image_shape)
            except DataError as exc:
                raise _MirrorFailed(str(exc)) from exc
        elif digest != expected:
            raise _MirrorFailed(
                f"SHA-256 of the uncompressed file is {digest}, expected {expected} "
                "(corrupt or not the official file)"
            )
        final = dest / (filename + (".gz" if is_gzip else ""))
        os.replace(tmp, final)
        tmp = None
        if progress is not None:
            progress(DownloadEvent("done", shown, url, done, total))
        return final
    finally:
        if tmp is not None:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass


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


# --------------------------------------------------------------------------- locating


def _how_to_supply(info: DatasetInfo) -> str:
    names = ", ".join(info.files)
    return (
        f"To supply the files (each plain or gzipped, as NAME or NAME.gz: {names}), do one of:\n"
        f"  - pass --data-dir DIR, with the files in DIR/{info.name}/ or in DIR/ itself;\n"
        f"  - set {_ENV_DATA}=DIR in the environment, DIR laid out the same way;\n"
        f"  - copy them into {cache_dir(info.name)}/;\n"
        f"  - or let cnncli download them (needs network access; {_ENV_MIRRORS}=URL,... "
        "sets the mirrors)."
    )


def _not_found(
    info: DatasetInfo,
    missing: Sequence[str],
    places: Sequence[Place],
    download_note: str,
) -> DataError:
    lines = [
        f"{info.title} file(s) not found: {', '.join(missing)} (looked for NAME and NAME.gz).",
        "Looked in:",
    ]
    for place in places:
        state = "" if place.path.is_dir() else " (does not exist)"
        lines.append(f"  - {place.path}  [{place.origin}]{state}")
    lines.append(download_note)
    lines.append(_how_to_supply(info))
    return DataError("\n".join(lines))


def locate(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    download: bool = True,
) -> dict[str, Path]:
    """Paths of ``split``'s images and labels files, downloading what is missing.

    Returns ``{"images": path, "labels": path}``. Files are searched for in
    :func:`search_dirs` order; a missing one is downloaded into
    :func:`cache_dir` unless ``download`` is false or ``CNNCLI_OFFLINE`` is set.
    Files found are not verified here (:func:`load` does that).
    """
    info = get(name)
    split = _check_split(info, split)
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
        note = "Downloading was not requested."
        raise _not_found(info, [wanted[k] for k in missing], places, note)
    if _offline():
        note = f"Downloading is disabled ({_ENV_OFFLINE} is set)."
        raise _not_found(info, [wanted[k] for k in missing], places, note)
    dest = cache_dir(info.name)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        note = f"Could not create the cache directory to download into: {exc}."
        raise _not_found(info, [wanted[k] for k in missing], places, note) from exc
    for i, kind in enumerate(missing):
        try:
            found[kind] = _download(info, wanted[kind], dest, progress)
        except _AllMirrorsFailed as failure:
            tried = "\n".join(f"  - {url}: {reason}" for url, reason in failure.attempts)
            note = f"Downloading {failure.filename} failed at every mirror:\n{tried}"
            still_missing = [wanted[k] for k in missing[i:]]
            raise _not_found(info, still_missing, places, note) from None
    return found  # type: ignore[return-value]


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
        what = f"{dims[0]} images of {dims[1]}x{dims[2]}" if kind == "images" else f"{dims[0]} labels"
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
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; they must agree. One of them is from another dataset "
            "or split; replace it with the matching official file."
        )


# --------------------------------------------------------------------------- decoded cache


def _identity(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _decoded_paths(info: DatasetInfo, split: str) -> tuple[Path, Path, Path]:
    folder = cache_dir(info.name) / "decoded"
    return (
        folder / f"{split}-images.npy",
        folder / f"{split}-labels.npy",
        folder / f"{split}.json",
    )


def _load_decoded(
    info: DatasetInfo, split: str, sources: Mapping[str, Path]
) -> tuple[np.ndarray, np.ndarray] | None:
    images_npy, labels_npy, record_path = _decoded_paths(info, split)
    try:
        record = json.loads(record_path.read_text())
        if record.get("format") != _DECODED_FORMAT:
            return None
        for kind, filename in zip(("images", "labels"), info.splits[split]):
            entry = record["sources"][kind]
            if {k: entry.get(k) for k in ("path", "size", "mtime_ns")} != _identity(sources[kind]):
                return None
            if info.sha256.get(filename) is not None and entry.get("sha256") != info.sha256[filename]:
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
        or images.ndim != 3
        or images.shape[1:] != tuple(info.image_shape)
        or labels.dtype != np.int64
        or labels.shape != (images.shape[0],)
        or (labels.size and (labels.min() < 0 or labels.max() >= len(info.classes)))
    ):
        return None
    return images, labels


def _atomic_save(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda out: np.save(out, array, allow_pickle=False))


def _save_decoded(
    info: DatasetInfo,
    split: str,
    sources: Mapping[str, Path],
    digests: Mapping[str, str],
    images: np.ndarray,
    labels: np.ndarray,
) -> None:
    """Cache decoded arrays; best effort (an unwritable cache only costs speed)."""
    images_npy, labels_npy, record_path = _decoded_paths(info, split)
    try:
        images_npy.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(images_npy, images)
        _atomic_save(labels_npy, labels)
        arrays = {}
        for kind, npy in (("images", images_npy), ("labels", labels_npy)):
            st = npy.stat()
            arrays[kind] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        record = {
            "format": _DECODED_FORMAT,
            "sources": {k: {**_identity(sources[k]), "sha256": digests[k]} for k in ("images", "labels")},
            "arrays": arrays,
        }
        write_text_atomic(record_path, json.dumps(record, indent=1))
    except OSError:
        pass


# --------------------------------------------------------------------------- public loading


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a dataset: images uint8 (N, 28, 28) and labels int64 (N,).

    ``name`` is a key of :data:`DATASETS`, ``split`` is ``"train"`` or ``"test"``,
    ``data_dir`` the CLI's ``--data-dir`` (searched first), ``progress`` an optional
    :data:`ProgressCallback` for downloads. Raises :class:`DataError` when the
    files cannot be found or fetched, or are not the genuine, complete files.
    The arrays are fresh and writable.
    """
    info = get(name)
    split = _check_split(info, split)
    sources = locate(info.name, split, data_dir, progress=progress)
    files = dict(zip(("images", "labels"), info.splits[split]))
    for kind, filename in files.items():
        if info.sha256.get(filename) is None:
            warnings.warn(
                f"{sources[kind]}: no known SHA-256 for {info.title} {filename}; "
                "its contents are checked for structure only, not verified.",
                DataWarning,
                stacklevel=2,
            )
    cached = _load_decoded(info, split, sources)
    if cached is not None:
        return cached
    images, image_digest = read_idx_file(
        sources["images"], "images", info.sha256.get(files["images"]), info.image_shape
    )
    labels_u8, label_digest = read_idx_file(
        sources["labels"], "labels", info.sha256.get(files["labels"]), info.image_shape
    )
    _check_pair(info, images, labels_u8, sources["images"], sources["labels"])
    images = images.copy()
    labels = labels_u8.astype(np.int64)
    _save_decoded(
        info, split, sources, {"images": image_digest, "labels": label_digest}, images, labels
    )
    return images, labels


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
    """Scale uint8 pixels to zero mean, unit variance with ``dataset``'s statistics.

    Accepts (N, H, W), (N, 1, H, W) or one (H, W) image; returns a new
    (N, 1, H, W) array of float ``dtype``: ``(pixel / 255 - mean) / std``.
    """
    info = get(dataset)
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise UsageError(
            f"normalise expects raw uint8 pixels 0..255, got {array.dtype} "
            "(already normalised?)."
        )
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[:, None]
    elif not (array.ndim == 4 and array.shape[1] == 1):
        raise UsageError(
            f"normalise expects images shaped (N, H, W) or (N, 1, H, W), got {array.shape}."
        )
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise UsageError(f"normalise needs a floating dtype, got {dt}.")
    out = array.astype(dt)
    out *= dt.type(1.0 / (255.0 * info.std))
    out -= dt.type(info.mean / info.std)
    return out
