"""Where a command writes, checked before it does any work.

A path a command is to write (a picture, an export, a gradient dump, a run folder) is checked when the
command starts, so that a slip in it is told at once, not after a training, a download or a long pass
whose result would then have nowhere to go. A mistake is a :class:`~cnncli.errors.UsageError` (exit
status 2) naming the option, the path and the rule.

The rules: a file goes into a folder that exists (cnncli makes no folders for a file: a misspelt folder
would otherwise be created silently) and can be written, and is not itself a folder; a folder a command
makes (a run folder, an experiment folder) is made with its parents, so the nearest of them that exists
must be a folder that can be written. The files themselves are written whole or not at all
(:mod:`cnncli.atomic`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cnncli.errors import UsageError


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
