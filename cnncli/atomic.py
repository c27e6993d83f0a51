"""Writing files so that a crash never leaves a torn one under the final name.

A file is written to a temporary name in the same folder, flushed to disk and
renamed over the old one (:func:`os.replace` is atomic), then the folder entry
is synced. Whenever the process dies, even by SIGKILL in the middle of a write,
the file under the final name is either the previous one or the new one.
Checkpoints, run files, gradient dumps and the dataset cache all go through here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


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
