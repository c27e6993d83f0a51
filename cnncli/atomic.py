"""The files a command writes for the user: where, checked before any work; how, never torn.

A file is written to a temporary name in the same folder, flushed to disk and
renamed over the old one (:func:`os.replace` is atomic), then the folder entry
is synced. Whenever the process dies, even by SIGKILL in the middle of a write,
the file under the final name is either the previous one or the new one.
Checkpoints, run files, gradient dumps and the dataset cache all go through here.

A path a command is to write (a picture, an export, a gradient dump, a run folder) is checked when the
command starts, so that a slip in it is told at once, not after a training, a download or a long pass
whose result would then have nowhere to go. A mistake is a :class:`~cnncli.errors.UsageError` (exit
status 2) naming the option, the path and the rule.

The rules: a file goes into a folder that exists (cnncli makes no folders for a file: a misspelt folder
would otherwise be created silently) and can be written, and is not itself a folder; a folder a command
makes (a run folder, an experiment folder) is made with its parents, so the nearest of them that exists
must be a folder that can be written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Callable

from cnncli.errors import UsageError


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(stream)`` so that ``path`` is always the old or the new whole file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        # mkstemp makes the file private; give it the mode a plain open() would.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    sync_dir(path.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (fsync the folder); a system that does not allow it is skipped."""
    # The rename is durable only once the folder's entry is on disk; not every system allows it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda out: out.write(text.encode("utf-8")))


def check_file(path: Path | str, flag: str, suffixes: Sequence[str] = (), example: str | None = None) -> Path:
    """``path``, a file ``flag`` asks a command to write; a :class:`UsageError` when it is a folder, when its
    name does not end in one of ``suffixes`` (any when empty), or when its folder does not exist or cannot be
    written. ``example``: a file name for the messages (``curves.png``)."""
    path = Path(path)
    example = example or f"out{suffixes[0] if suffixes else ''}"
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: give the name of a file to write in it, e.g. "
                         f"{flag} {path / example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path}: the file type is taken from its name and must be "
                         f"{'one of ' if len(suffixes) > 1 else ''}{', '.join(suffixes)}, e.g. {flag} {example}")
    folder = path.parent
    blocked = _blocked(folder)
    if blocked is not None:
        raise UsageError(f"cannot write {flag} {path}: {blocked} is a file, not a folder")
    if not folder.is_dir():
        raise UsageError(f"cannot write {flag} {path}: the folder {folder} does not exist; a file is written into "
                         f"a folder that exists, so create it first (mkdir -p {folder}) or name another")
    _check_writable(folder, flag, path)
    return path


def check_folder(path: Path | str, flag: str) -> Path:
    """``path``, a folder ``flag`` asks a command to make (with its parents) and write in; a
    :class:`UsageError` when it or one of its parents is a file, or when the nearest that exists cannot be
    written. Whether an existing folder may be used is the command's own rule."""
    path = Path(path)
    blocked = _blocked(path)
    if blocked is not None:
        what = f"{flag} {path} is a file" if blocked == path else f"cannot make {flag} {path}: {blocked} is a file"
        raise UsageError(f"{what}, not a folder; name a folder to make")
    nearest = next(p for p in (path, *path.parents) if p.exists())
    _check_writable(nearest, flag, path)
    return path


def _blocked(path: Path) -> Path | None:
    """The first of ``path``'s parents, or ``path`` itself, that exists and is no folder."""
    for p in (*reversed(path.parents), path):
        if p.exists() and not p.is_dir():
            return p
    return None


def _check_writable(folder: Path, flag: str, path: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {flag} {path}: the folder {folder} cannot be written (its permissions); "
                         "name a folder you can write in")
