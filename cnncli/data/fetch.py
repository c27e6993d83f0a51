"""Downloading one file from a dataset's mirrors: streamed to a temporary file, verified, then installed.

The bytes go to a temporary file in the destination folder; the caller's
``install`` checks them and gives them their final place (a rename, or an
extraction). Whatever happens on the way (a dropped connection, a wrong
checksum, Ctrl-C) the temporary file is removed, so nothing half-written is
ever left under a final name.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cnncli import __version__
from cnncli.errors import DataError

from .places import ENV_MIRRORS, mirrors
from .registry import DatasetInfo

#: Seconds a download may wait on connecting or on any single read.
DOWNLOAD_TIMEOUT = 30.0
_CHUNK = 1 << 16


@dataclass(frozen=True)
class DownloadEvent:
    """One step of a download, passed to the ``progress`` callback.

    ``status`` is one of

    * ``"start"``: a request to ``url`` for ``filename`` was answered; ``done`` is 0
      and ``total`` the size in bytes, or ``None`` when the server did not say.
      After a failed mirror the same file starts again from 0 at the next one.
    * ``"progress"``: ``done`` bytes of ``total`` have arrived.
    * ``"done"``: the file is verified and in place under its final name (an
      archive: verified and extracted).
    * ``"failed"``: this mirror did not work; ``message`` says why. Another mirror
      may follow (with a new ``"start"``), or :func:`load` raises ``DataError``.

    ``filename`` is the name being fetched (``train-images-idx3-ubyte.gz``,
    ``cifar-10-binary.tar.gz``). ``unit`` is ``"bytes"`` for a download; an
    image folder being decoded into the cache reports the same way in
    ``"files"`` (``filename``: which split, ``url``: the folder).
    """

    status: Literal["start", "progress", "done", "failed"]
    filename: str
    url: str
    done: int
    total: int | None
    message: str = ""
    unit: Literal["bytes", "files"] = "bytes"


#: ``progress(event)``; called from the loading thread, between network reads.
ProgressCallback = Callable[[DownloadEvent], None]


class MirrorFailed(Exception):
    """One mirror did not deliver a good copy of one file; the message says why."""


@dataclass
class AllMirrorsFailed(Exception):
    """No mirror delivered a good copy of ``filename``; ``attempts`` are (url, reason) pairs."""

    filename: str
    attempts: list[tuple[str, str]] = field(default_factory=list)


#: ``install(downloaded file, url)`` checks a finished download and puts it in its final place,
#: returning that place; it raises :class:`MirrorFailed` when the file is not the one wanted.
Install = Callable[[Path, str], Path]


def fetch(
    info: DatasetInfo,
    remote_name: str,
    dest: Path,
    install: Install,
    progress: ProgressCallback | None,
) -> Path:
    """Download ``remote_name`` into ``dest`` from the first of ``info``'s mirrors that delivers a good copy."""
    return fetch_from(mirrors(info.name), remote_name, dest, install, progress)


def fetch_from(
    bases: list[str],
    remote_name: str,
    dest: Path,
    install: Install,
    progress: ProgressCallback | None,
) -> Path:
    """Download ``remote_name`` into ``dest`` from the first of the base URLs ``bases`` that delivers a good copy;
    :class:`AllMirrorsFailed` says why each failed."""
    failure = AllMirrorsFailed(remote_name)
    if not bases:
        failure.attempts.append(("(none)", f"no mirrors configured ({ENV_MIRRORS} is empty)"))
    for base in bases:
        url = base.rstrip("/") + "/" + remote_name
        try:
            return _fetch_from(url, remote_name, dest, install, progress)
        except MirrorFailed as exc:
            reason = str(exc)
            failure.attempts.append((url, reason))
            if progress is not None:
                progress(DownloadEvent("failed", remote_name, url, 0, None, reason))
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


def _fetch_from(
    url: str,
    remote_name: str,
    dest: Path,
    install: Install,
    progress: ProgressCallback | None,
) -> Path:
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{remote_name}.", suffix=".part", dir=dest)
    except OSError as exc:
        raise DataError(
            f"Cannot write the download of {remote_name} into {dest}: {exc.strerror or exc}. "
            f"Make that directory writable, or set XDG_CACHE_HOME to a writable place."
        ) from exc
    tmp = Path(tmp_name)
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
                        progress(DownloadEvent("start", remote_name, url, 0, total))
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(DownloadEvent("progress", remote_name, url, done, total))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise MirrorFailed(_describe_network_error(exc)) from exc
            if total is not None and done != total:
                raise MirrorFailed(f"connection closed after {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        final = install(tmp, url)
        if progress is not None:
            progress(DownloadEvent("done", remote_name, url, done, total))
        return final
    finally:
        # Gone already when install renamed it; removed here on every failure, Ctrl-C included.
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
