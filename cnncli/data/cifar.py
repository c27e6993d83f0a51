"""CIFAR-10 and CIFAR-100: the authors' binary archive, verified, extracted safely, parsed strictly.

Only the binary archives are read (``cifar-10-binary.tar.gz``,
``cifar-100-binary.tar.gz``), never the pickled Python ones: nothing
downloaded is ever unpickled. A record is one byte per label (CIFAR-10: the
class; CIFAR-100: the coarse class, then the fine one) and 3,072 pixel bytes,
the red plane, then the green, then the blue, each 32×32 row-major.

Where the files come from, for a split, in :func:`~cnncli.data.places.search_dirs` order:

* an extracted folder (``cifar-10-batches-bin/``, ``cifar-100-binary/``)
  holding the split's files is used as it is;
* else the archive itself, verified (size, MD5, SHA-256: see
  :mod:`.registry`) and extracted into the cache, unless the cache already
  holds an extraction of a verified archive;
* else the archive is downloaded (into a temporary file, verified, extracted,
  and deleted: the extracted folder is what is kept).

Extraction reads only the expected members, as regular files, and writes
them under names of its own into a temporary folder that is renamed into
place once complete; an archive holding a link, a device, an absolute path
or a ``..`` component is refused as a whole. The extracted folder carries a
record (``cnncli-extracted.json``) of the archive's checksums and each file's
size and SHA-256: files under it are checked against that record (when their
decoded arrays are not already cached), and a folder without it (extracted by
hand) is only checked for structure, with a :class:`~cnncli.data.DataWarning`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cnncli.atomic import write_text_atomic
from cnncli.errors import DataError

from . import decoded
from .fetch import AllMirrorsFailed, MirrorFailed, ProgressCallback, fetch
from .places import ENV_DATA, ENV_MIRRORS, ENV_OFFLINE, Place, cache_dir, not_found, offline, search_dirs
from .registry import Archive, DatasetInfo, DataWarning

#: The record of an extraction, inside the extracted folder.
MANIFEST = "cnncli-extracted.json"
_MANIFEST_FORMAT = 1
_MAX_LABEL_FILE = 1 << 16  # bytes; the real ones are about 1 kB
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- parsing


def parse_records(
    data: bytes,
    label_classes: Sequence[int],
    image_shape: tuple[int, int, int],
    source: str = "<bytes>",
    records: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a CIFAR binary file: pixels uint8 (N, C, H, W) and labels uint8 (N, len(label_classes)).

    Checks that the file is a whole, non-zero number of records, ``records``
    of them when given, and that every label byte is below its number of
    classes. ``source`` names the file in error messages. The arrays are
    read-only views of ``data``.
    """
    n_labels = len(label_classes)
    size = n_labels + int(np.prod(image_shape))
    what = f"records of {n_labels} label byte{'s' if n_labels > 1 else ''} and {size - n_labels} pixel bytes"
    if len(data) == 0 or len(data) % size:
        count, extra = divmod(len(data), size)
        raise DataError(
            f"{source}: {len(data):,} bytes is not a whole number of {size}-byte {what} "
            f"({count:,} records and {extra} bytes over); the file is truncated or is not a file "
            "of this dataset. Delete it and extract or download the archive again."
        )
    count = len(data) // size
    if records is not None and count != records:
        raise DataError(
            f"{source}: holds {count:,} records, the official file has {records:,}; it is truncated "
            "or is not a file of this dataset. Delete it and extract or download the archive again."
        )
    table = np.frombuffer(data, np.uint8).reshape(count, size)
    labels = table[:, :n_labels]
    for j, classes in enumerate(label_classes):
        bad = np.flatnonzero(labels[:, j] >= classes)
        if bad.size:
            which = f"label byte {j + 1} of {n_labels}" if n_labels > 1 else "label"
            raise DataError(
                f"{source}: {bad.size} record(s) with {which} out of range 0..{classes - 1}, the "
                f"first is {int(labels[bad[0], j])} in record {int(bad[0])}. The file is corrupt or "
                "belongs to another dataset; extract or download the archive again."
            )
    return table[:, n_labels:].reshape(count, *image_shape), labels


def read_label_names(path: Path) -> tuple[str, ...]:
    """The class names a label-name file lists, one a line (blank lines left out)."""
    try:
        text = path.read_bytes()[: _MAX_LABEL_FILE + 1]
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}.") from exc
    return _names(text, path)


def _names(raw: bytes, source: Path | str) -> tuple[str, ...]:
    if len(raw) > _MAX_LABEL_FILE:
        raise DataError(f"{source}: over {_MAX_LABEL_FILE:,} bytes; this is not a list of class names.")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not a text file of class names ({exc}).") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _check_names(names: tuple[str, ...], expected: tuple[str, ...], source: Path | str) -> None:
    if names != expected:
        diff = next((i for i, (a, b) in enumerate(zip(names, expected)) if a != b), min(len(names), len(expected)))
        got = repr(names[diff]) if diff < len(names) else "nothing"
        want = repr(expected[diff]) if diff < len(expected) else "nothing"
        raise DataError(
            f"{source}: lists {len(names)} class names, the official file {len(expected)}; line "
            f"{diff + 1} is {got} where {want} belongs. This is not a file of this dataset."
        )


def _read(path: Path) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}.") from exc
    return data, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the archive


def archive_fault(path: Path, archive: Archive) -> str | None:
    """Why the file at ``path`` is not ``archive`` (size, MD5, SHA-256), or ``None`` when it is."""
    size = path.stat().st_size
    if size != archive.size:
        return f"it is {size:,} bytes long, the official archive {archive.size:,}"
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_CHUNK):
            md5.update(block)
            sha.update(block)
    if md5.hexdigest() != archive.md5:
        return f"its MD5 is {md5.hexdigest()}, the official archive's {archive.md5}"
    if sha.hexdigest() != archive.sha256:
        return f"its SHA-256 is {sha.hexdigest()}, the official archive's {archive.sha256}"
    return None


def _refuse(path: Path, what: str) -> DataError:
    return DataError(
        f"{path}: refused to extract: {what}. The official archive holds only regular files "
        "and folders; delete this file and supply the official archive."
    )


def _member_fault(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"member {name!r} has an absolute path"
    if ".." in PurePosixPath(name).parts or ".." in name.split("\\"):
        return f"member {name!r} points outside the archive's folder ('..')"
    if member.issym() or member.islnk():
        return f"member {name!r} is a link (to {member.linkname!r})"
    if not (member.isreg() or member.isdir()):
        return f"member {name!r} is a device, pipe or other special file"
    return None


def extract(info: DatasetInfo, archive_path: Path, dest: Path) -> tuple[Path, dict[str, Any]]:
    """Extract ``archive_path`` (verified already) into ``dest/<root>/``; return that folder and its record.

    Reads every member's header and refuses the whole archive when one is
    unsafe (:func:`_member_fault`); copies the expected members only, checks
    their sizes and the class names, writes the extraction record, then renames
    the complete folder into place (replacing an older one). On any error or
    interruption the temporary folder is removed and nothing has changed.
    """
    arch = info.archive
    assert arch is not None
    pixels = int(np.prod(info.image_shape))
    record_size = len(arch.label_classes) + pixels
    wanted = {f"{arch.root}/{name}": name for name in arch.members}
    try:
        work = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    except OSError as exc:
        raise DataError(f"Cannot extract {archive_path} into {dest}: {exc.strerror or exc}. Make that "
                        "directory writable, or set XDG_CACHE_HOME to a writable place.") from exc
    try:
        out_root = work / arch.root
        out_root.mkdir()
        files: dict[str, dict[str, Any]] = {}
        try:
            with tarfile.open(archive_path, mode="r:gz") as tar:
                for member in tar:
                    fault = _member_fault(member)
                    if fault is not None:
                        raise _refuse(archive_path, fault)
                    name = wanted.get(member.name.removeprefix("./"))
                    if name is None:
                        continue  # a folder, or a file cnncli does not read (readme.html)
                    if not member.isreg():
                        raise _refuse(archive_path, f"member {member.name!r} is not a regular file")
                    if name in files:
                        raise _refuse(archive_path, f"member {member.name!r} appears twice")
                    limit = arch.records[name] * record_size if name in arch.records else _MAX_LABEL_FILE
                    if (name in arch.records and member.size != limit) or member.size > limit:
                        raise DataError(
                            f"{archive_path}: member {member.name!r} is {member.size:,} bytes, expected "
                            f"{limit:,}{'' if name in arch.records else ' at most'}; this is not the "
                            "official archive. Delete it and supply the official one."
                        )
                    files[name] = _copy_member(tar, member, out_root / name)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DataError(
                f"{archive_path}: cannot be read as a .tar.gz archive ({exc}); it is corrupt or "
                "truncated. Delete it and supply the official archive."
            ) from exc
        missing = [f"{arch.root}/{name}" for name in arch.members if name not in files]
        if missing:
            raise DataError(
                f"{archive_path}: lacks {', '.join(missing)}; this is not the official archive. "
                "Delete it and supply the official one."
            )
        for name, expected in arch.label_files.items():
            _check_names(_names((out_root / name).read_bytes(), f"{archive_path}: {arch.root}/{name}"),
                         expected, f"{archive_path}: {arch.root}/{name}")
        manifest = {
            "format": _MANIFEST_FORMAT,
            "archive": {"filename": arch.filename, "md5": arch.md5, "sha256": arch.sha256},
            "files": files,
        }
        write_text_atomic(out_root / MANIFEST, json.dumps(manifest, indent=1))
        final = dest / arch.root
        if final.exists() or final.is_symlink():
            os.replace(final, work / "replaced")
        os.replace(out_root, final)
        return final, manifest
    except OSError as exc:
        raise DataError(f"Cannot extract {archive_path} into {dest}: {exc.strerror or exc}.") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> dict[str, Any]:
    source = tar.extractfile(member)
    assert source is not None  # a regular file
    digest = hashlib.sha256()
    size = 0
    with source, open(target, "xb") as out:
        while block := source.read(_CHUNK):
            out.write(block)
            digest.update(block)
            size += len(block)
        out.flush()
        os.fsync(out.fileno())
    if size != member.size:
        raise tarfile.ReadError(f"member {member.name!r} ends after {size} of {member.size} bytes")
    return {"size": size, "sha256": digest.hexdigest()}


def read_manifest(folder: Path, archive: Archive) -> dict[str, Any] | None:
    """The extraction record in ``folder`` when it is one of ``archive`` (the official one), else ``None``."""
    try:
        record = json.loads((folder / MANIFEST).read_text())
        same = record.get("format") == _MANIFEST_FORMAT and record["archive"] == {
            "filename": archive.filename, "md5": archive.md5, "sha256": archive.sha256}
        files = record["files"]
        if same and all(isinstance(files[n]["sha256"], str) for n in archive.members):
            return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


# --------------------------------------------------------------------------- locating


def _url(info: DatasetInfo) -> str:
    arch = info.archive
    assert arch is not None
    return info.mirrors[0].rstrip("/") + "/" + arch.filename if info.mirrors else arch.filename


def _how_to_supply(info: DatasetInfo) -> str:
    arch = info.archive
    assert arch is not None
    cache = cache_dir(info.name)
    return (
        f"To supply {info.title} by hand, fetch {_url(info)} ({arch.size:,} bytes, MD5 {arch.md5}) "
        "where there is network access, then do one of:\n"
        f"  - pass --data-dir DIR, with {arch.filename} in DIR/{info.directory}/ or in DIR/ itself;\n"
        f"  - set {ENV_DATA}=DIR in the environment, DIR laid out the same way;\n"
        f"  - copy it into {cache}/;\n"
        f"  - or let cnncli download it (needs network access; {ENV_MIRRORS}=URL,... sets the mirrors).\n"
        f"The archive is verified and extracted into {cache}/{arch.root}/ once. A folder {arch.root}/ "
        "extracted by hand, in the same places, is used as it is (checked for structure only)."
    )


def _missing(info: DatasetInfo, split: str, places: Sequence[Place], note: str) -> DataError:
    arch = info.archive
    assert arch is not None
    what = f"{arch.filename}, or a folder {arch.root}/ holding {', '.join(info.splits[split])}"
    return not_found(info, what, places, note, _how_to_supply(info))


def _complete(folder: Path, names: Sequence[str]) -> bool:
    return all((folder / name).is_file() for name in names)


def _from_archive(info: DatasetInfo, archive_path: Path, split: str) -> tuple[Path, dict[str, Any]]:
    """The cache's extraction of a verified archive, made from ``archive_path`` when there is none yet."""
    arch = info.archive
    assert arch is not None
    dest = cache_dir(info.name)
    extracted = dest / arch.root
    manifest = read_manifest(extracted, arch)
    if manifest is not None and _complete(extracted, info.splits[split]):
        return extracted, manifest
    try:
        fault = archive_fault(archive_path, arch)
    except OSError as exc:
        raise DataError(f"{archive_path}: cannot be read: {exc.strerror or exc}.") from exc
    if fault is not None:
        raise DataError(
            f"{archive_path}: checksum mismatch: {fault}. The file is corrupt, incomplete or not the "
            f"official archive. Delete it (cnncli then looks elsewhere or downloads a fresh copy) or "
            f"replace it with a good copy of {_url(info)}."
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"Cannot create {dest} to extract {archive_path} into: {exc.strerror or exc}. Set "
                        "XDG_CACHE_HOME to a writable place.") from exc
    return extract(info, archive_path, dest)


def locate_folder(
    info: DatasetInfo,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
    download: bool,
) -> tuple[Path, dict[str, Any] | None]:
    """The folder holding ``split``'s data files, and its extraction record (``None``: extracted by hand)."""
    arch = info.archive
    assert arch is not None
    places = search_dirs(info.name, data_dir)
    for place in places:
        folder = place.path / arch.root
        if _complete(folder, info.splits[split]):
            return folder, read_manifest(folder, arch)
        if (place.path / arch.filename).is_file():
            return _from_archive(info, place.path / arch.filename, split)
    if not download:
        raise _missing(info, split, places, "Downloading was not requested.")
    if offline():
        raise _missing(info, split, places, f"Downloading is disabled ({ENV_OFFLINE} is set).")
    dest = cache_dir(info.name)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        note = f"Could not create the cache directory to download into: {exc}."
        raise _missing(info, split, places, note) from exc

    def install(tmp: Path, url: str) -> Path:
        fault = archive_fault(tmp, arch)
        if fault is not None:
            raise MirrorFailed(f"{fault} (corrupt or not the official archive)")
        return extract(info, tmp, dest)[0]

    try:
        folder = fetch(info, arch.filename, dest, install, progress)
    except AllMirrorsFailed as failure:
        tried = "\n".join(f"  - {url}: {reason}" for url, reason in failure.attempts)
        raise _missing(info, split, places, f"Downloading {failure.filename} failed at every mirror:\n{tried}") from None
    return folder, read_manifest(folder, arch)


# --------------------------------------------------------------------------- loading


def load_split(
    info: DatasetInfo,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One split: images uint8 (N, 3, 32, 32) in file order, labels int64 (N,) (``info.label_byte``'s)."""
    arch = info.archive
    assert arch is not None
    folder, manifest = locate_folder(info, split, data_dir, progress, download=True)
    names = info.splits[split]
    sources = {name: folder / name for name in names}
    if manifest is None:
        warnings.warn(
            f"{folder}: not extracted by cnncli from a verified {arch.filename}, so its files are "
            "checked for structure only; put the archive itself where cnncli looks (or remove the "
            "folder to have it downloaded) to verify them.",
            DataWarning,
            stacklevel=3,
        )
        for name, expected in arch.label_files.items():
            if (folder / name).is_file():
                _check_names(read_label_names(folder / name), expected, folder / name)
    expected_sha = {name: manifest["files"][name]["sha256"] if manifest else None for name in names}
    cached = decoded.load(info, split, sources, expected_sha)
    if cached is not None:
        return cached
    images, labels, digests = [], [], {}
    for name, path in sources.items():
        data, digest = _read(path)
        if expected_sha[name] is not None and digest != expected_sha[name]:
            raise DataError(
                f"{path}: changed since cnncli extracted it from the verified {arch.filename}: its "
                f"SHA-256 is {digest}, the extracted file's was {expected_sha[name]}. Delete the folder "
                f"{folder} (cnncli then extracts or downloads the archive again)."
            )
        x, y = parse_records(data, arch.label_classes, info.image_shape, str(path), arch.records.get(name))
        images.append(x)
        labels.append(y[:, info.label_byte])
        digests[name] = digest
    image_array = np.concatenate(images)
    label_array = np.concatenate(labels).astype(np.int64)
    decoded.save(info, split, sources, digests, image_array, label_array)
    return image_array, label_array


def locate(
    info: DatasetInfo,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
    download: bool,
) -> dict[str, Path]:
    """Paths of ``split``'s data files by name, extracting or downloading the archive when needed."""
    folder, _ = locate_folder(info, split, data_dir, progress, download)
    return {name: folder / name for name in info.splits[split]}
