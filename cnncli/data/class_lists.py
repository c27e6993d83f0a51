"""Class lists: the classes published weights predict, shipped with the package as data files.

A class list is what a set of published weights (a model file's ``weights:`` section) names in ``classes:``:
the classes in label order, each with an id and a name. It holds no images, so it is no dataset cnncli can
load; an image folder laid out by its classes can be read as it (:func:`match_folders`).

* ``imagenet``: ImageNet-1k (ILSVRC 2012), 1000 classes, from ``imagenet_classes.tsv`` beside this module
  (one line per class: index, WordNet id, name; its header line says where the names and ids come from).

Matching a folder's class folders onto a list (:func:`match_folders`): a folder named by a class's id
(``n02099601``) or by its name (``golden retriever``) is that class. A name matches exactly, else ignoring
case and reading ``_`` as a space (``golden_retriever``), when that leaves one class (ImageNet has both
``Cardigan``, the corgi, and ``cardigan``, the sweater: those need their exact name or their id).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from cnncli.errors import UsageError

#: Registered class lists: name -> (title, data file in this package).
CLASS_LISTS: dict[str, tuple[str, str]] = {
    "imagenet": ("ImageNet", "imagenet_classes.tsv"),
}
_SUGGESTIONS = 3


@dataclass(frozen=True)
class ClassList:
    """One class list: ``ids[i]`` and ``names[i]`` are label ``i``'s."""

    name: str
    title: str
    ids: tuple[str, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def describe(self, label: int) -> str:
        """``'golden retriever' (n02099601)``."""
        return f"{self.names[label]!r} ({self.ids[label]})"


def is_class_list(name: str | None) -> bool:
    return name in CLASS_LISTS


@functools.cache
def get(name: str) -> ClassList:
    """The class list ``name`` (a :class:`UsageError` listing the registered ones when there is none)."""
    if name not in CLASS_LISTS:
        raise UsageError(f"unknown class list {name!r}: the registered ones are {', '.join(sorted(CLASS_LISTS))}")
    title, file = CLASS_LISTS[name]
    text = resources.files(__package__).joinpath(file).read_text(encoding="utf-8")
    ids, names = [], []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        index, wnid, label = line.split("\t")
        if int(index) != len(ids):  # pragma: no cover - the shipped file is checked by a test
            raise ValueError(f"{file}: line for class {index} out of order")
        ids.append(wnid)
        names.append(label)
    return ClassList(name, title, tuple(ids), tuple(names))


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def match(folder: str, classes: ClassList) -> int:
    """The label of the class a folder named ``folder`` holds, or a :class:`UsageError` saying why none."""
    if folder in classes.ids:
        return classes.ids.index(folder)
    if folder in classes.names:
        return classes.names.index(folder)
    loose = [i for i, n in enumerate(classes.names) if _key(n) == _key(folder)]
    loose += [i for i, w in enumerate(classes.ids) if w.casefold() == folder.casefold()]
    if len(loose) == 1:
        return loose[0]
    if loose:
        both = " or ".join(classes.describe(i) for i in loose)
        raise UsageError(f"image folder class {folder!r} could be the {classes.title} class {both}: name its "
                         "folder by the exact name or by the id")
    keys = {_key(n): i for i, n in enumerate(classes.names)}
    near = difflib.get_close_matches(_key(folder), list(keys), n=_SUGGESTIONS, cutoff=0.6)
    hint = f"; the nearest names: {', '.join(classes.describe(keys[k]) for k in near)}" if near else ""
    raise UsageError(f"image folder class {folder!r} is not one of the {classes.title} classes: name each class "
                     f"folder by the class's WordNet id (e.g. {classes.ids[0]}) or its name (e.g. "
                     f"{classes.names[0]!r}){hint}")


def match_folders(folders: Sequence[str], classes: ClassList) -> list[int]:
    """Each class folder's label in ``classes`` (see the module docstring); two folders of one class are
    a :class:`UsageError` too."""
    labels = [match(f, classes) for f in folders]
    seen: dict[int, str] = {}
    for folder, label in zip(folders, labels):
        if label in seen:
            raise UsageError(f"image folder classes {seen[label]!r} and {folder!r} are the same {classes.title} "
                             f"class, {classes.describe(label)}: put their images in one folder")
        seen[label] = folder
    return labels
