"""The optional dependencies (pyproject.toml's extras) and the one check that one is there.

``pip install .`` brings what the core commands need; pictures as files,
image files, ONNX and PyTorch come with extras (``pip install '.[plots]'``).
A command checks the extras its flags will need before it does any work
(before downloads or training), so a missing one costs the user a message,
not an hour: :func:`require` raises a :class:`~cnncli.errors.UsageError` that
names what needs the package and the ``pip install`` that brings it. The places
that import an optional package call :func:`require` first too, so no path
ends in a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnncli.errors import UsageError


@dataclass(frozen=True)
class Extra:
    """An extra as messages name it (``package``) and the modules cnncli imports from it."""

    package: str
    modules: tuple[str, ...]
    note: str = ""  # said after the install command


#: pyproject.toml's ``[project.optional-dependencies]`` but ``test`` (a test holds the names equal).
EXTRAS: dict[str, Extra] = {
    "images": Extra("Pillow", ("PIL.Image", "PIL.ImageOps")),
    "plots": Extra("matplotlib", ("matplotlib.figure",)),
    # onnxruntime, also in the extra, only runs exported graphs (the tests do); cnncli writes them with onnx.
    "onnx": Extra("the onnx package", ("onnx",)),
    # Training on PyTorch and exporting to it; its state dicts are read without it (cnncli.exchange.pth).
    # pip's default PyTorch wheel on Linux is the CUDA build, several GB; most users here have no GPU.
    "torch": Extra("PyTorch", ("torch",), note="; without a GPU, take PyTorch's CPU build first: pip install torch "
                   "--index-url https://download.pytorch.org/whl/cpu"),
}


def install_hint(name: str) -> str:
    """The command that installs the extra ``name``'s packages into the environment cnncli runs in.

    The packages themselves, with the version bounds the installed cnncli declares for the extra, not
    ``cnncli[name]``: cnncli is installed from its source folder, and a package index may hold another
    project under that name.
    """
    import shlex
    from importlib import metadata

    try:
        declared = metadata.requires("cnncli") or []
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        declared = []
    marker = f'extra == "{name}"'
    wanted = [r.split(";")[0].strip() for r in declared if r.split(";", 1)[-1].strip() == marker]
    note = EXTRAS[name].note if name in EXTRAS else ""
    if not wanted:
        return f"pip install '.[{name}]' in cnncli's folder{note}"
    return "pip install " + " ".join(shlex.quote(r) for r in wanted) + f" (cnncli's {name} extra){note}"


def require(name: str, purpose: str) -> None:
    """Import the modules of the extra ``name``, or raise UsageError: ``{purpose} needs {package}: pip install ...``.

    ``purpose`` says what needs it, with the flag, e.g. ``writing pictures to files (--out)``. The modules
    are imported, not merely looked up: they are used right after, and an import statement is what a missing
    package (or a test's stand-in for one) makes fail.
    """
    from cnncli.engine import threads

    extra = EXTRAS[name]
    try:
        # PyTorch's OpenMP runtime reads the environment as it loads; the other packages ignore it.
        with threads.foreign_openmp():
            for module in extra.modules:
                __import__(module)
    except ImportError:
        raise UsageError(f"{purpose} needs {extra.package}: {install_hint(name)}") from None
