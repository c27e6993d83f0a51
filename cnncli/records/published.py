"""Published weights: the files a model file's ``weights:`` section names, found or downloaded, verified,
and read as a :class:`~cnncli.records.checkpoint.Checkpoint` (``--weights imagenet``).

Where a file is looked for, in order (the datasets' rules, :mod:`cnncli.data.places`), under the name it is
published with (``resnet18-f37072fd.pth``):

1. the folder ``CNNCLI_WEIGHTS`` names (as ``CNNCLI_DATA`` names one for datasets);
2. the user cache, ``$XDG_CACHE_HOME/cnncli/weights/`` (default ``~/.cache/cnncli/weights/``).

When it is in neither, it is downloaded into the cache from its URL, or from the base URLs in
``CNNCLI_MIRRORS`` when that is set (``{dataset}`` in one reads ``weights``), with the download progress
reported as the datasets' is (:class:`~cnncli.data.DownloadEvent`). ``CNNCLI_OFFLINE=1`` forbids
downloading; the error for a file found nowhere lists every place looked in and how to put it there by hand.

Verification is torchvision's: the file name's last ``-`` part (``f37072fd``) must be the start of the
file's SHA-256 hex digest, checked when the file is downloaded. A download that fails the check is refused
and not kept (:func:`cnncli.data.fetch.fetch_from` removes it). A file found in one of the places (put
there by hand, say) is checked the first time it is used, and refused when it fails; the cache's
``verified.json`` remembers the size and modification time of each file that passed, the download's own
check included, so that a file is hashed again only when it changed (hashing ResNet-50's 98 MB at every
run would cost a fraction of a second each time).

The checkpoint holds the file's state dict with the model's layer names (the section's ``names`` map,
``features.0`` -> ``conv1``), ``origin: torch`` (so it is read as any PyTorch state dict: dense weights
transposed, ``num_batches_tracked`` dropped) and a ``source`` record as a trained run's checkpoint has one
(:class:`~cnncli.data.source.Source`): the class list's title and names, the input shape, the weights'
mean, std and resize rule. ``predict``, ``eval`` and ``features`` read that record as they read a run's,
so none of them needs to know where the weights came from.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cnncli.atomic import sync_dir
from cnncli.data import class_lists, places
from cnncli.data.fetch import AllMirrorsFailed, MirrorFailed, ProgressCallback, fetch_from
from cnncli.data.source import Source
from cnncli.errors import DataError, UsageError
from cnncli.model import spec
from cnncli.records import checkpoint as ckpt_io

#: The environment variable naming a folder of weight files (the files under their published names).
ENV_WEIGHTS = "CNNCLI_WEIGHTS"
#: The folder of downloaded weights in the user cache (and what ``{dataset}`` reads in ``CNNCLI_MIRRORS``).
DIRECTORY = "weights"
_CHUNK = 1 << 20


def cache_folder() -> Path:
    """Where downloaded weights are kept: ``<cnncli cache>/weights``."""
    return places.cache_dir() / DIRECTORY


def search_places() -> list[places.Place]:
    """The folders a weights file is looked for in, in order."""
    found = []
    env = os.environ.get(ENV_WEIGHTS) or ""
    if env:
        found.append(places.Place(Path(env).expanduser(), ENV_WEIGHTS))
    found.append(places.Place(cache_folder(), "cache"))
    return found


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _installer(weights: spec.PublishedWeights, dest: Path):
    """The check of a finished download (:data:`cnncli.data.fetch.Install`): the hash its name carries."""

    def install(tmp: Path, url: str) -> Path:
        digest = sha256(tmp)
        if not digest.startswith(weights.hash_prefix):
            raise MirrorFailed(f"its SHA-256 is {digest[:16]}..., which does not start with {weights.hash_prefix} "
                               "as the file's name says: not the published file (refused, not kept)")
        final = dest / weights.filename
        os.replace(tmp, final)
        sync_dir(dest)
        _remember(final)  # hashed just now: its first use from the cache need not hash it again
        return final

    return install


#: The cache's record of files that passed the hash check (found in place, or downloaded):
#: path -> [size, mtime_ns].
VERIFIED = "verified.json"


def _verified() -> dict:
    """The :data:`VERIFIED` record; empty when there is none or it cannot be read."""
    import json

    try:
        record = json.loads((cache_folder() / VERIFIED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _seen(path: Path) -> tuple[str, list[int]]:
    """``path``'s key in :data:`VERIFIED` and what is recorded of it: its size and modification time."""
    stat = path.stat()
    return str(path.resolve()), [stat.st_size, stat.st_mtime_ns]


def _remember(path: Path, seen: tuple[str, list[int]] | None = None) -> None:
    """Record in :data:`VERIFIED` that ``path`` passed the hash check, as ``seen`` (:func:`_seen`) before the
    hashing, else as it is now."""
    import json

    from cnncli.atomic import write_text_atomic

    record = _verified()
    key, stat = seen or _seen(path)
    record[key] = stat
    try:
        cache_folder().mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache_folder() / VERIFIED, json.dumps(record, indent=1, sort_keys=True))
    except OSError:
        pass  # a cache that cannot be written: the file is hashed again next time, nothing else is lost


def _checked(path: Path, weights: spec.PublishedWeights) -> Path:
    """``path`` once its SHA-256 starts with the hash its name carries (:data:`VERIFIED` spares the hashing
    of a file that passed before and has not changed since); a file that fails is a :class:`DataError`."""
    seen = _seen(path)
    if _verified().get(seen[0]) == seen[1]:
        return path
    digest = sha256(path)
    if not digest.startswith(weights.hash_prefix):
        raise DataError(f"{path}: its SHA-256 is {digest[:16]}..., which does not start with "
                        f"{weights.hash_prefix} as its name says: it is not the published file of {weights.url} "
                        "(damaged, or other weights under that name); remove it, or put the published file there")
    _remember(path, seen)
    return path


def _what(weights: spec.PublishedWeights, model: str) -> str:
    return f"{model}'s published {weights.name} weights"


def _how_to_supply(weights: spec.PublishedWeights) -> str:
    return (f"To supply the file by hand, download {weights.url} where there is network access, then do one of:\n"
            f"  - put it in a folder and set {ENV_WEIGHTS} to that folder;\n"
            f"  - copy it into {cache_folder()}/;\n"
            f"  - or let cnncli download it (needs network access; {places.ENV_MIRRORS}=URL,... sets the base "
            "URLs to download from).\n"
            f"Keep its name, {weights.filename}: it carries the start of the file's SHA-256.")


def locate(weights: spec.PublishedWeights, model: str, progress: ProgressCallback | None = None) -> Path:
    """The weights file: found in :func:`search_places`, else downloaded into the cache and verified."""
    looked = search_places()
    for place in looked:
        if (place.path / weights.filename).is_file():
            return _checked(place.path / weights.filename, weights)
    def missing(note: str) -> DataError:
        return places.not_found(_what(weights, model), weights.filename, looked, note, _how_to_supply(weights))

    if places.offline():
        raise missing(f"Downloading is disabled ({places.ENV_OFFLINE} is set).")
    dest = cache_folder()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise missing(f"Could not create the cache folder to download into: {exc.strerror or exc}.") from None
    base = weights.url[: -len(weights.filename)]
    try:
        return fetch_from(places.mirror_bases([base], DIRECTORY), weights.filename, dest,
                          _installer(weights, dest), progress)
    except AllMirrorsFailed as failure:
        tried = "\n".join(f"  - {url}: {reason}" for url, reason in failure.attempts)
        raise missing(f"Downloading {failure.filename} failed:\n{tried}") from None


def source(weights: spec.PublishedWeights, model_spec: spec.ModelSpec) -> Source:
    """What images the weights expect and which classes they predict, as a run's checkpoint records it."""
    classes = class_lists.get(weights.classes)
    return Source(classes.name, classes.title, classes.names, tuple(model_spec.input),  # type: ignore[arg-type]
                  weights.mean, weights.std, resize=weights.resize)


def renamed(state: dict, names: dict[str, str]) -> dict:
    """``state`` with each key's layer (all but its last ``.`` part) renamed by ``names`` where it says."""
    out = {}
    for key, value in state.items():
        layer, dot, suffix = key.rpartition(".")
        out[f"{names.get(layer, layer)}{dot}{suffix}"] = value
    return out


def torchvision_keys(weights: spec.PublishedWeights, model_spec: spec.ModelSpec, aux: bool) -> set[str]:
    """The keys of a state dict of ``weights``' network as torchvision saves it: every parameter and buffer of
    ``model_spec`` (its auxiliary heads too when ``aux``) under the layer name the entry's ``names:`` maps to it
    (torch's ``num_batches_tracked`` counters aside: cnncli keeps none)."""
    from cnncli.model.graph import build

    back = {ours: theirs for theirs, ours in weights.names.items()}
    return {f"{back.get(n.name, n.name)}.{suffix}" for n in build(model_spec, aux=aux).nodes
            for suffix in {**n.params, **n.buffers}}


def layout_of(state: dict, model_spec: spec.ModelSpec) -> str | None:
    """The published weights of ``model_spec`` whose layout the state dict ``state`` is in: it holds exactly
    their torchvision keys (:func:`torchvision_keys`, with the auxiliary heads or without, as torchvision saves
    a network built without them); None when it is in no entry's layout. The keys decide, not the shapes: a
    network of that layout trained for other classes is read with the entry's names, and its head's size
    decides the rest (:func:`read_as_published`)."""
    keys = {k for k in state if not k.endswith(".num_batches_tracked")}
    for name, weights in model_spec.weights.items():
        if any(keys == torchvision_keys(weights, model_spec, aux) for aux in (True, False)):
            return name
    return None


#: The ``meta`` entry of a state dict read in the layout of published weights: their name (``imagenet``).
LAYOUT = "layout"


def in_layout(saved: ckpt_io.Checkpoint, model_spec: spec.ModelSpec) -> ckpt_io.Checkpoint:
    """A PyTorch state dict (``--weights FILE``) in the layout of ``model_spec``'s published weights
    (:func:`layout_of`) with its keys renamed as theirs are, recording which (:data:`LAYOUT`); any other
    checkpoint as it is. The file is the user's own: no hash applies to it."""
    if saved.meta.get("origin") != "torch" or saved.config:
        return saved
    name = layout_of(saved.state, model_spec)
    if name is None:
        return saved
    return ckpt_io.Checkpoint(saved.path, renamed(saved.state, model_spec.weights[name].names),
                              {**saved.meta, LAYOUT: name})


def read_as_published(saved: ckpt_io.Checkpoint, model_spec: spec.ModelSpec, held: int | None) -> str | None:
    """Weights in the layout of published weights (:func:`in_layout`) that record no classes and whose head has
    ``held`` units, as many as those weights' class list: read as those weights are, their classes and
    preparation recorded in ``saved`` (as :func:`open_published` records them). The sentence that says so, or
    None when they are not read so."""
    name = saved.meta.get(LAYOUT)
    if name not in model_spec.weights or saved.meta.get("source") is not None:
        return None
    weights = model_spec.weights[name]
    classes = class_lists.get(weights.classes)
    if held != len(classes):
        return None
    saved.meta["source"] = source(weights, model_spec).to_config()
    return (f"{saved.path}: weights in torchvision's layout: read as {name}'s ({len(classes)} {classes.title} "
            "classes, its preparation)")


def open_published(model_spec: spec.ModelSpec, name: str,
                   progress: ProgressCallback | None = None) -> ckpt_io.Checkpoint:
    """The published weights ``name`` of ``model_spec``'s ``weights:`` section, as a checkpoint."""
    weights = model_spec.weights[name]
    path = locate(weights, model_spec.name, progress)
    saved = ckpt_io.load(path)
    meta = {**saved.meta, "source": source(weights, model_spec).to_config(),
            "published": {"name": name, "url": weights.url, "model": model_spec.name}}
    return ckpt_io.Checkpoint(path, renamed(saved.state, weights.names), meta)


def models_with(name: str) -> list[str]:
    """The built-in models whose files have published weights ``name``."""
    found = []
    for model in spec.builtin_names():
        try:
            if name in spec.load(model).weights:
                found.append(model)
        except Exception:  # noqa: BLE001 - a broken built-in file is its own test's failure, not this message's
            continue
    return found


def check_name(value: str, model_spec: spec.ModelSpec) -> None:
    """Refuse ``--weights NAME`` where ``NAME`` is published weights that ``model_spec`` has none of (and no
    file of that name exists): a :class:`UsageError` listing the models that have them."""
    others = models_with(value)
    if not others and value not in class_lists.CLASS_LISTS:
        return
    own = ", ".join(model_spec.weights) or "none"
    listed = ", ".join(others) if others else "none of the built-in models"
    raise UsageError(f"--weights {value}: model '{model_spec.name}' has no published {value} weights (its model "
                     f"file's weights: section has {own}); the models that have them: {listed}. Or give a "
                     "checkpoint file (.npz) or a PyTorch state dict (.pt, .pth)")
