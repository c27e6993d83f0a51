"""Rendering: the only package that imports rich.

Modules elsewhere return records (dataclasses, dicts); the functions here turn
them into Rich tables, progress bars, charts and JSON. One submodule per command:
``summary``, ``training``, ``evaluation``, ``trace``, ``predict``, ``plot``,
``features``, ``compare``, ``export``; and the pieces they share: ``downloads`` (dataset
bars), ``pictures`` (images as half blocks), ``charts`` (line charts, heat
maps) and ``figures`` (files through matplotlib).
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBMODULES = ("summary", "training", "evaluation", "trace", "downloads", "pictures", "predict", "charts",
               "plot", "figures", "features", "compare", "export")


def console(stderr: bool = False):
    """The console every command prints to (colour only on a terminal)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def colour_on(console) -> bool:
    """Whether ``console`` shows colour: a terminal, and ``NO_COLOR`` unset (Rich then strips colours,
    so pictures and charts must draw with glyphs instead)."""
    return console.color_system is not None and not console.no_color


def __getattr__(name: str) -> ModuleType:
    # Submodules load on first use so that one command never pays for another's imports.
    if name in _SUBMODULES:
        return importlib.import_module(f"cnncli.render.{name}")
    raise AttributeError(name)
