"""The engine's thread settings and the GEMM split across cores."""

from __future__ import annotations

import numpy as np
import pytest

import cnncli.engine.jit  # noqa: F401  (loading the engine applies the settings)
from cnncli.engine import threads


def test_engine_runs_openblas_on_one_thread_and_openmp_waits_passively():
    status = threads.status()
    # numpy's wheels bundle OpenBLAS; another BLAS is left alone (None).
    assert status["blas_threads"] in (1, None)
    assert status["omp_wait_policy"] is not None


@pytest.mark.parametrize("shape", [(64, 300, 500), (3, 200, 700), (1, 50, 4096), (257, 31, 1)])
def test_split_matmul_equals_numpy(monkeypatch, shape):
    monkeypatch.setattr(threads, "SPLIT_MIN_MACS", 1)
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
    monkeypatch.setattr(threads, "SPLIT_MIN_MACS", 1)
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
