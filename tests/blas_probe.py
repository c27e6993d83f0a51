"""How many threads numpy's OpenBLAS runs on, read from the library itself (test helper).

Independent of :mod:`cnncli.engine.threads` on purpose, so that a test can
check what that module claims to have done: threadpoolctl when it is
installed (it is not a dependency), else OpenBLAS's own C getter, called
through ctypes on every OpenBLAS library mapped into this process. Imports
nothing of cnncli, so that a fresh interpreter can read the count before the
engine is loaded and again after.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

# The getter under the names OpenBLAS builds export it: numpy 2.x wheels bundle
# scipy-openblas (64-bit ints, prefixed symbols); older wheels and distribution
# builds use the plain name.
GETTERS = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)


def numpy_blas_name() -> str:
    """The BLAS numpy was built against, as its build configuration names it ('' if unknown)."""
    try:
        config = np.show_config(mode="dicts")
        return str(config["Build Dependencies"]["blas"]["name"])
    except Exception:  # noqa: BLE001 (an old numpy without mode="dicts")
        return ""


def numpy_uses_openblas() -> bool:
    return "openblas" in numpy_blas_name().lower()


def _mapped_openblas() -> list[str]:
    paths: list[str] = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if path.startswith("/") and "openblas" in os.path.basename(path).lower() and path not in paths:
                paths.append(path)
    return paths


def openblas_thread_counts() -> list[int] | None:
    """The thread count of every OpenBLAS loaded in this process, or None if it cannot be read here."""
    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS is loaded and initialised
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    if threadpoolctl is not None:
        return [int(i["num_threads"]) for i in threadpoolctl.threadpool_info()
                if i.get("internal_api") == "openblas"]
    if not os.path.exists("/proc/self/maps"):
        return None
    counts = []
    for path in _mapped_openblas():
        lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        name = next((n for n in GETTERS if hasattr(lib, n)), None)
        if name is not None:
            getter = getattr(lib, name)
            getter.argtypes, getter.restype = [], ctypes.c_int
            counts.append(int(getter()))
    return counts
