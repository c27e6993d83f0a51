"""NCHW planes to and from channels-innermost rows, and back: the layout of the kernels with channels in the lanes.

A kernel that holds channels (or filters) in a vector's lanes needs each
position's channels side by side: rows of ``width`` elements, one per position
of a group of samples, numbered s·H·W + h·W + w (``width`` is the channel count
rounded up, zeros past it). :func:`to_rows` makes them from NCHW samples and
:func:`from_rows` writes them back, in L × L blocks transposed in registers
(:func:`cnncli.engine.simd.transpose`), the positions past a multiple of L one
at a time.

Shapes: x, y (N, C, H, W); rows (≥ S·H·W, width), flat.
"""

from __future__ import annotations

from cnncli.engine import simd
from cnncli.engine.jit import kernel

__all__ = ["from_rows", "to_rows", "to_rows_block"]


@kernel
def to_rows(x, s0, sc, rows, width, lanes_):
    """Samples s0 .. s0+sc-1 of x (N, C, H, W) into ``rows`` (sc·H·W rows of ``width``, channels innermost, zeros
    in the columns past C)."""
    for s in range(sc):
        for c0 in range(0, width, lanes_):
            to_rows_block(x, s0 + s, s, rows, width, c0, lanes_)


@kernel
def to_rows_block(x, n, s, rows, width, c0, lanes_):
    """Channels c0 .. c0+L-1 (zeros past C) of sample n of x (N, C, H, W) into columns c0 .. c0+L-1 of rows
    s·H·W ... (s+1)·H·W - 1 of ``rows`` (rows of ``width``)."""
    c_ = x.shape[1]
    plane = x.shape[2] * x.shape[3]
    src = x.reshape(-1)
    whole = plane // lanes_ * lanes_
    first = n * c_ * plane
    present = min(lanes_, max(0, c_ - c0))
    for p0 in range(0, whole, lanes_):
        simd.transpose(rows, (s * plane + p0) * width + c0, width, src, first + c0 * plane + p0, plane, present,
                       x[0, 0, 0, :0], 0)
    for p in range(whole, plane):
        at = (s * plane + p) * width + c0
        for i in range(lanes_):
            rows[at + i] = src[first + (c0 + i) * plane + p] if i < present else 0.0


@kernel
def from_rows(rows, width, s0, sc, y, c0, cb, bias, lanes_):
    """Channels c0 .. c0+cb-1 of ``rows`` (sc·H·W rows of ``width``) into samples s0 .. s0+sc-1 of y (N, C, H, W),
    plus bias[c] when ``bias`` (C,) is not empty. c0 is a multiple of L."""
    c_ = y.shape[1]
    plane = y.shape[2] * y.shape[3]
    dst = y.reshape(-1)
    whole = plane // lanes_ * lanes_
    has_bias = bias.shape[0] > 0
    for s in range(sc):
        for cl in range(c0, min(c_, c0 + cb), lanes_):
            first = ((s0 + s) * c_ + cl) * plane
            present = min(lanes_, c_ - cl)
            done = whole if present == lanes_ else 0
            for p0 in range(0, done, lanes_):
                simd.transpose(dst, first + p0, plane, rows, (s * plane + p0) * width + cl, width, lanes_, bias, cl)
            for p in range(done, plane):
                for i in range(present):
                    value = rows[(s * plane + p) * width + cl + i]
                    if has_bias:
                        value += bias[cl + i]
                    dst[first + i * plane + p] = value
