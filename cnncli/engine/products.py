"""Sums of products with filters (or channels) in the lanes: the register blocks of
:func:`cnncli.engine.simd.multiply_add_outer` laid over whole matrices.

One block computes P points × V vectors of columns (P·V accumulators), each
step V loaded vectors times P broadcast scalars. Over a matrix, the columns go
in blocks of 4 vectors (``rules.OUTER_VECTORS``; 2 at most with 16 registers),
the last ones in blocks of 2 and 1, and the points in blocks of P
(``rules.outer_points``), then 3 and 1 for the ones left over (with 32
registers P is 6, 12 or 24 for V = 4, 2, 1). Every output is one sum, in the
order of its steps, whatever block computed it and wherever it sits.

* :func:`outer_sums`: out[i, j] += Σ over rows r and steps k of a[bases[i] + arows[r] + k·astep] ·
  b[brows[r] + k·bstep + j]: the weight gradients (points channel-taps or filters, steps positions or tiles);
  :func:`outer_rows` the same on a window of out's columns, stored or added: the blocked forward pass with
  filters in the lanes (points positions, rows taps, steps channels);
* :func:`matrix_product`: out (M, N) = a (M, K) · b (K, N), both row-major, K
  in runs whose rows of b stay in L1 while every point goes past them
  (``rules.outer_channels``): the products of Winograd's transformed tiles.
"""

from __future__ import annotations

import numpy as np

from cnncli.engine import rules, simd
from cnncli.engine.jit import kernel

__all__ = ["MOST_VECTORS", "matrix_product", "outer_rows", "outer_sums", "point_bases"]

#: The widest block's vectors on this machine (4 with 32 registers, 2 with 16).
MOST_VECTORS = rules.outer_vectors(max(rules.OUTER_VECTORS), simd.VECTOR_REGISTERS)
_P4, _P2, _P1 = (rules.outer_points(v, simd.VECTOR_REGISTERS) for v in (4, 2, 1))
_many4, _many2, _many1 = (simd.multiply_add_outer(p, v) for p, v in ((_P4, 4), (_P2, 2), (_P1, 1)))
_three4, _three2, _three1 = (simd.multiply_add_outer(3, v) for v in (4, 2, 1))
_one4, _one2, _one1 = (simd.multiply_add_outer(1, v) for v in (4, 2, 1))


@kernel
def _points(a, bases, arows, astep, b, boff, brows, bstep, count, out, ooff, ostride, add, vectors):
    # Every point i < len(bases) of one block of ``vectors`` column vectors: blocks of P points, then 3, then 1;
    # point i's outputs at out[ooff + i·ostride:].
    n = bases.shape[0]
    if vectors == 4:
        for i in range(0, n - _P4 + 1, _P4):
            _many4(a, bases[i:], arows, astep, b, boff, brows, bstep, count, out, ooff + i * ostride, ostride, add)
        for i in range(n // _P4 * _P4, n - 2, 3):
            _three4(a, bases[i:], arows, astep, b, boff, brows, bstep, count, out, ooff + i * ostride, ostride, add)
        for i in range(n - (n % _P4) % 3, n):
            _one4(a, bases[i:], arows, astep, b, boff, brows, bstep, count, out, ooff + i * ostride, ostride, add)
    elif vectors == 2:
        for i in range(0, n - _P2 + 1, _P2):
            _many2(a, bases[i:], arows, astep, b, boff, brows, bstep, count, out, ooff + i * ostride, ostride, add)
        for i in range(n // _P2 * _P2, n - 2, 3):
            _three2(a, bases[i:], arows, astep, b, boff, brows, bstep, count, out, ooff + i * ostride, ostride, add)
        for i in range(n - (n % _P2) % 3, n):
            _one2(a, bases[i:], arows, astep, b, boff, brows, bstep, count, out, ooff + i * ostride, ostride, add)
    else:
        for i in range(0, n - _P1 + 1, _P1):
            _many1(a, bases[i:], arows, astep, b, boff, brows, bstep, count, out, ooff + i * ostride, ostride, add)
        for i in range(n // _P1 * _P1, n - 2, 3):
            _three1(a, bases[i:], arows, astep, b, boff, brows, bstep, count, out, ooff + i * ostride, ostride, add)
        for i in range(n - (n % _P1) % 3, n):
            _one1(a, bases[i:], arows, astep, b, boff, brows, bstep, count, out, ooff + i * ostride, ostride, add)


@kernel
def _vectors(left, lanes_):
    # rules.outer_vectors for ``left`` columns: the widest block they fill (the narrowest, for fewer than a vector).
    if MOST_VECTORS >= 4 and left >= 4 * lanes_:
        return 4
    if left >= 2 * lanes_:
        return 2
    return 1


@kernel
def outer_rows(a, bases, arows, astep, b, boff, brows, bstep, count, out, ooff, ostride, columns, add, lanes_):
    """out[ooff + i·ostride + j] = (out[…] if ``add`` else 0) + Σ over r < len(arows), k < count of
    a[bases[i] + arows[r] + k·astep] · b[boff + brows[r] + k·bstep + j] for every point i < len(bases) and column
    j < ``columns`` (a multiple of L)."""
    j0 = 0
    while j0 < columns:
        v = _vectors(columns - j0, lanes_)
        _points(a, bases, arows, astep, b, boff + j0, brows, bstep, count, out, ooff + j0, ostride, add, v)
        j0 += v * lanes_


@kernel
def outer_sums(a, bases, arows, astep, b, brows, bstep, count, out, columns, lanes_):
    """out[i·columns + j] += Σ over r < len(arows), k < count of a[bases[i] + arows[r] + k·astep] ·
    b[brows[r] + k·bstep + j] for every point i < len(bases) and column j < ``columns`` (a multiple of L): out's
    rows are ``columns`` long, b's steps ``bstep`` apart."""
    outer_rows(a, bases, arows, astep, b, 0, brows, bstep, count, out, 0, columns, columns, 1, lanes_)


@kernel
def matrix_product(a, bases, b, bstride, depth, out, ostride, columns, chunk, zero_rows, lanes_):
    """out[i·ostride + j] = Σ over k < ``depth`` of a[bases[i] + k] · b[k·bstride + j] for every point i <
    len(bases) (bases[i]: row i of a) and column j < ``columns`` (a multiple of L): k in runs of ``chunk``.
    ``zero_rows``: an int64 array holding one 0."""
    j0 = 0
    while j0 < columns:
        v = _vectors(columns - j0, lanes_)
        for k0 in range(0, depth, chunk):
            _points(a[k0:], bases, zero_rows, 1, b, k0 * bstride + j0, zero_rows, bstride, min(chunk, depth - k0),
                    out, j0, ostride, k0, v)
        j0 += v * lanes_


def point_bases(points: int, stride: int) -> np.ndarray:
    """Row i's first element, i·``stride``, for ``points`` rows (int64): :func:`matrix_product`'s ``bases``."""
    return np.arange(points, dtype=np.int64) * stride
