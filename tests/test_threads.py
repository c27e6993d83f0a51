"""The engine's thread settings and the GEMM split across cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnncli.engine.jit  # noqa: F401  (loading the engine applies the settings)
from cnncli.engine import rules, threads

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import blas_probe  # noqa: E402  (the thread count read from OpenBLAS itself, not through cnncli)

OPENBLAS = blas_probe.numpy_uses_openblas()
needs_openblas = pytest.mark.skipif(
    not OPENBLAS, reason=f"numpy here uses {blas_probe.numpy_blas_name() or 'an unknown BLAS'}, not OpenBLAS: "
                         "there is no OpenBLAS thread setter to call")


@needs_openblas
def test_engine_runs_openblas_on_one_thread():
    # numpy's wheels (Linux x86-64 among them) bundle OpenBLAS: the setter must be found and used.
    assert threads.status()["blas_threads"] == threads.BLAS_THREADS == 1
    counts = blas_probe.openblas_thread_counts()
    if counts is None:
        pytest.skip("no threadpoolctl and no /proc/self/maps: the thread count cannot be read independently here")
    assert counts and all(n == 1 for n in counts), counts


@pytest.mark.skipif(OPENBLAS, reason="numpy here uses OpenBLAS (see the test above)")
def test_another_blas_is_left_alone():
    assert threads.status()["blas_threads"] is None


_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import blas_probe
before = blas_probe.openblas_thread_counts()
import cnncli.engine.jit
from cnncli.engine import threads
print(json.dumps({"before": before, "after": blas_probe.openblas_thread_counts(), "status": threads.status()}))
"""


def _probe(**env_vars: str) -> dict:
    """Thread counts in a fresh interpreter before and after it imports the engine, and threads.status()."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env.update(env_vars)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(TESTS)], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


@needs_openblas
def test_loading_the_engine_brings_openblas_down_to_one_thread_and_makes_openmp_wait_passively():
    # A fresh interpreter that starts OpenBLAS on two threads: importing the engine must set it to one.
    got = _probe(OPENBLAS_NUM_THREADS="2")
    if got["before"] is None:
        pytest.skip("no threadpoolctl and no /proc/self/maps: the thread count cannot be read independently here")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    if cpus >= 2:  # OpenBLAS caps its threads at the CPUs: with one, "before" is 1 already
        assert got["before"] and all(n == 2 for n in got["before"]), got
    assert got["after"] and all(n == 1 for n in got["after"]), got
    assert got["status"] == {"blas_threads": 1, "omp_wait_policy": "PASSIVE"}


_LATER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import blas_probe
import cnncli.engine.jit
import scipy.linalg  # what Numba imports while it compiles or loads its first kernel, where SciPy is installed
print(json.dumps({"libraries": blas_probe._mapped_openblas(), "counts": blas_probe.openblas_thread_counts()}))
"""


@needs_openblas
def test_an_openblas_loaded_after_the_engine_starts_on_one_thread_too():
    pytest.importorskip("scipy.linalg")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", _LATER, str(TESTS)], env=env, capture_output=True, text=True,
                         check=True).stdout
    got = json.loads(out.splitlines()[-1])
    if got["counts"] is None:
        pytest.skip("no threadpoolctl and no /proc/self/maps: the thread count cannot be read independently here")
    assert got["counts"] and all(n == 1 for n in got["counts"]), got


def test_a_users_openmp_wait_policy_is_kept():
    assert _probe(OMP_WAIT_POLICY="ACTIVE")["status"]["omp_wait_policy"] == "ACTIVE"


@pytest.mark.parametrize("shape", [(64, 300, 500), (3, 200, 700), (1, 50, 4096), (257, 31, 1)])
def test_split_matmul_equals_numpy(monkeypatch, shape):
    monkeypatch.setattr(rules, "SLAB_MIN_MACS", 1)
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    want = a @ b
    assert np.allclose(threads.matmul(a, b), want, rtol=1e-5, atol=1e-4)
    out = np.empty((m, n), dtype=np.float32)
    assert threads.matmul(a, b, out=out) is out
    assert np.allclose(out, want, rtol=1e-5, atol=1e-4)
    # transposed operands (views), as the layers pass them
    assert np.allclose(threads.matmul(b.T, a.T), want.T, rtol=1e-5, atol=1e-4)


def test_stacked_matmul_splits_along_the_longer_axis(monkeypatch):
    monkeypatch.setattr(rules, "SLAB_MIN_MACS", 1)
    submitted = []
    real_pool = threads.pool()

    class Spy:
        def submit(self, fn):
            submitted.append(fn)
            return real_pool.submit(fn)

    monkeypatch.setattr(threads, "pool", lambda: Spy())
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 96, 40))   # groups x filters x taps
    b = rng.standard_normal((2, 40, 300))  # groups x taps x columns
    out = np.empty((2, 96, 300))
    assert threads.matmul(a, b, out) is out
    assert np.allclose(out, a @ b, rtol=1e-12)
    import numba
    assert len(submitted) == (numba.get_num_threads() - 1)


GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None


@pytest.mark.skipif(not GLIBC, reason="the allocator settings are glibc's")
def test_the_engine_keeps_freed_memory_unless_the_user_set_the_allocator():
    from cnncli.engine import memory

    assert memory.status() == {"kept": True}
    probe = ("import json, cnncli.engine.jit; from cnncli.engine import memory; "
             "print(json.dumps(memory.status()))")
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"kept": False}  # the user's own setting stands


_FOREIGN = """
import builtins, json, os, sys
import cnncli.engine.jit
from cnncli.engine import threads
from cnncli.exchange import torch_module
seen = {}
real_import = builtins.__import__
def spy(name, *args, **kwargs):
    if name == "torch" and "torch" not in sys.modules:
        seen["at_import"] = os.environ.get("OMP_WAIT_POLICY")
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
try:
    torch_module.require()
except Exception as e:  # torch not installed: what the variable was while it was looked for still counts
    seen["error"] = type(e).__name__
seen["after"] = os.environ.get("OMP_WAIT_POLICY")
print(json.dumps(seen))
"""


@pytest.mark.parametrize("user", [None, "ACTIVE", "PASSIVE"])
def test_pytorch_loads_with_the_users_openmp_policy_not_the_engines(user):
    """The engine's passive OpenMP waiting is for its own threads: PyTorch's runtime, which reads the variable
    when torch is imported, gets what the user set (or nothing), and the engine's setting is back after."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user is not None:
        env["OMP_WAIT_POLICY"] = user
    out = subprocess.run([sys.executable, "-c", _FOREIGN], env=env, capture_output=True, text=True,
                         check=True).stdout
    got = json.loads(out.splitlines()[-1])
    assert got["at_import"] == user
    assert got["after"] == (user or "PASSIVE")
