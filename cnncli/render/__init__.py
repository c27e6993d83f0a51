"""Rendering: the only package that imports rich.

Modules elsewhere return records (dataclasses, dicts); the functions here turn
them into Rich tables, progress bars, charts and JSON. One submodule per command:
``summary``, ``training``, ``evaluation``, ``trace``, ``predict``, ``plot``,
``features``, ``explain``, ``compare``, ``export``; and the pieces they share: ``downloads`` (dataset
bars), ``pictures`` (images as half blocks), ``charts`` (line charts, heat
maps), ``tables`` (tables wider than the console, in blocks of columns) and
``figures`` (files through matplotlib).

Everything printed keeps to the console's width (80 columns in a file or pipe):
sentences go through :func:`say`, which wraps them between words; tables that
could be wider are printed with :func:`cnncli.render.tables.print_table`. Only a
command or code line meant to be copied is printed whole (``soft_wrap=True``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBMODULES = ("summary", "training", "evaluation", "trace", "downloads", "pictures", "predict", "charts",
               "plot", "figures", "features", "explain", "compare", "export", "tables")


def console(stderr: bool = False):
    """The console every command prints to (colour only on a terminal). It is as wide as the terminal, or
    ``COLUMNS``, else 80 columns (a file or pipe); the renderers keep every line within that width."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def say(console, text, style: str = "") -> None:
    """Print a sentence (a str, or a Rich Text for styled parts) wrapped between words at the console's width.

    A word longer than a line, such as a long path, stays whole on a line of its own instead of being folded
    (Rich's default), so that it can still be copied; the terminal wraps it if it must.
    """
    from rich.text import Text

    text = Text(text, style=style) if isinstance(text, str) else text.copy()
    text.overflow = "ignore"  # Text.wrap then breaks lines between words only
    for line in text.wrap(console, console.options.max_width):
        line.rstrip()
        console.print(line, soft_wrap=True)


def colour_on(console) -> bool:
    """Whether ``console`` shows colour: a terminal, and ``NO_COLOR`` unset (Rich then strips colours,
    so pictures and charts must draw with glyphs instead)."""
    return console.color_system is not None and not console.no_color


def head_sizes(changes) -> str:
    """Heads sized to other classes (:class:`cnncli.model.head.HeadChange`), in words: ``fc: 10 → 3 units``."""
    after = changes[0].after
    if len({c.before for c in changes}) == 1:
        return f"{', '.join(c.layer for c in changes)}: {changes[0].before} → {after} {changes[0].unit}"
    return ", ".join(f"{c.layer}: {c.before} → {after} {c.unit}" for c in changes)


def weights_head(changes) -> str:
    """The line of a command whose weights file records no classes and whose heads were sized as the file holds
    them (:attr:`cnncli.records.trained.Trained.head`)."""
    return f"head: {head_sizes(changes)}, from the weights file (it records no classes)"


def head_record(changes) -> list[dict]:
    """The heads sized from the weights file, for ``--format json`` (empty when none was)."""
    return [{"layer": c.layer, "model_file_units": c.before, "units": c.after} for c in changes]


def __getattr__(name: str) -> ModuleType:
    # Submodules load on first use so that one command never pays for another's imports.
    if name in _SUBMODULES:
        return importlib.import_module(f"cnncli.render.{name}")
    raise AttributeError(name)
