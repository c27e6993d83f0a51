"""Where a dataset's files are looked for, where they are downloaded from, and what to say when they are missing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cnncli.errors import DataError

from .registry import DatasetInfo, get

ENV_DATA = "CNNCLI_DATA"
ENV_MIRRORS = "CNNCLI_MIRRORS"
ENV_OFFLINE = "CNNCLI_OFFLINE"


@dataclass(frozen=True)
class Place:
    """A directory searched for a dataset's files, and why it is searched."""

    path: Path
    origin: str  # "--data-dir", "CNNCLI_DATA", "cache" or "system"


def cache_dir(name: str | None = None) -> Path:
    """cnncli's user cache, ``$XDG_CACHE_HOME/cnncli`` (default ``~/.cache/cnncli``).

    With a dataset ``name``, that dataset's folder in it (downloads land there;
    datasets that share their files share the folder).
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    root = root / "cnncli"
    return root / get(name).directory if name is not None else root


def search_dirs(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Place]:
    """The directories searched for dataset ``name``'s files, in order."""
    info = get(name)
    places: list[Place] = []
    for root, origin in ((data_dir, "--data-dir"), (os.environ.get(ENV_DATA) or None, ENV_DATA)):
        if root is None or str(root) == "":
            continue
        root = Path(root).expanduser()
        places.append(Place(root / info.directory, origin))
        places.append(Place(root, origin))
    places.append(Place(cache_dir(info.name), "cache"))
    places.extend(Place(Path(d), "system") for d in info.system_dirs)
    return places


def mirrors(name: str) -> list[str]:
    """Base URLs dataset ``name`` is downloaded from, in order (``CNNCLI_MIRRORS`` overrides)."""
    info = get(name)
    return mirror_bases(info.mirrors, info.directory)


def mirror_bases(defaults: Sequence[str], directory: str) -> list[str]:
    """The base URLs to download from: ``CNNCLI_MIRRORS``'s when it is set, else ``defaults``; ``{dataset}``
    in one is replaced by ``directory`` (a dataset's folder name, or ``weights`` for published weights)."""
    env = os.environ.get(ENV_MIRRORS, "").strip()
    bases = [b.strip() for b in env.split(",") if b.strip()] if env else list(defaults)
    return [b.replace("{dataset}", directory) for b in bases]


def offline() -> bool:
    """Whether ``CNNCLI_OFFLINE`` forbids downloading."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def not_found(
    what: DatasetInfo | str,
    missing: str,
    places: Sequence[Place],
    download_note: str,
    how_to_supply: str,
) -> DataError:
    """The error for files found nowhere: what is missing (a dataset's, or ``what`` in words), every place
    looked in, why nothing was downloaded."""
    title = what if isinstance(what, str) else what.title
    lines = [
        f"{title} file(s) not found: {missing}.",
        "Looked in:",
    ]
    for place in places:
        state = "" if place.path.is_dir() else " (does not exist)"
        lines.append(f"  - {place.path}  [{place.origin}]{state}")
    lines.append(download_note)
    lines.append(how_to_supply)
    return DataError("\n".join(lines))
