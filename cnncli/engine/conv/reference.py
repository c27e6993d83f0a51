"""The plain convolution: what a plain network (``Network(fast=False)``) runs, and what every strategy is tested
against.

Written from the definition, in numpy, a kernel tap at a time: the input under tap (i, j) of every output is
a strided window of the zero-padded input, ``xp[:, :, i·dh :: sh, j·dw :: sw]`` cut to (OH, OW), and each
group's outputs gain that window times the tap's (F/groups, C/groups) weights. The input gradient adds each
tap's weightsᵀ · dy back into the same windows; the weight gradient of a tap is dy · windowᵀ. No unfolded
column matrix, no fusion, no threshold: a matrix product per tap and group (numpy's BLAS, big ones cut into
slabs over the cores by :func:`cnncli.engine.threads.matmul`, as a plain dense layer's), in the arrays' dtype.
"""

from __future__ import annotations

import numpy as np

from cnncli.engine.arrays import Pair, array
from cnncli.engine.conv.geometry import Call, checked
from cnncli.engine.threads import matmul

__all__ = ["backward", "forward"]


def _window(xp: np.ndarray, call: Call, i: int, j: int) -> np.ndarray:
    """The (N, C, OH, OW) view of the padded input ``xp`` under tap (i, j) of every output."""
    r, c = i * call.dh, j * call.dw
    return xp[:, :, r : r + call.sh * (call.oh - 1) + 1 : call.sh, c : c + call.sw * (call.ow - 1) + 1 : call.sw]


def _columns(window: np.ndarray, call: Call) -> np.ndarray:
    """A tap's window as (groups, C/groups, N·OH·OW), each group's channels a matrix."""
    return np.ascontiguousarray(window.transpose(1, 0, 2, 3)).reshape(call.groups, call.cg, -1)


def _padded(x: np.ndarray, call: Call) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (call.ph, call.ph), (call.pw, call.pw)))


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, padding: Pair, dilation: Pair,
            groups: int) -> np.ndarray:
    """y (N, F, OH, OW) = Σ over taps and channels of the group of x's window × w, + b: as
    ``torch.nn.functional.conv2d``, in x's dtype."""
    x, w, call = checked(x, w, stride, padding, dilation, groups)
    xp = _padded(x, call)
    acc = np.zeros((call.groups, call.fg, call.n * call.oh * call.ow), dtype=x.dtype)
    for i in range(call.kh):
        for j in range(call.kw):
            tap = w[:, :, i, j].reshape(call.groups, call.fg, call.cg)
            acc += matmul(tap, _columns(_window(xp, call, i, j), call))
    y = acc.reshape(call.f, call.n, call.oh, call.ow).transpose(1, 0, 2, 3)
    if b is not None:
        bias = array("b", b, 1, x.dtype)
        if bias.shape[0] != call.f:
            raise ValueError(f"b must have shape ({call.f},), got {bias.shape}")
        y = y + bias[None, :, None, None]
    return np.ascontiguousarray(y)


def backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, stride: Pair, padding: Pair, dilation: Pair,
             groups: int, need_dx: bool = True, need_db: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx or None, dw, db or None) of :func:`forward` given dy = dL/dy: the arguments and results of
    :func:`cnncli.engine.conv.conv2d_backward`."""
    x, w, call = checked(x, w, stride, padding, dilation, groups)
    dy = array("dy", dy, 4, x.dtype)
    if dy.shape != (call.n, call.f, call.oh, call.ow):
        raise ValueError(f"dy must have shape {(call.n, call.f, call.oh, call.ow)}, got {dy.shape}")
    xp = _padded(x, call)
    dxp = np.zeros_like(xp) if need_dx else None
    g = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(call.groups, call.fg, -1)
    dw = np.empty_like(w)
    for i in range(call.kh):
        for j in range(call.kw):
            cols = _columns(_window(xp, call, i, j), call)
            dw[:, :, i, j] = matmul(g, cols.transpose(0, 2, 1)).reshape(call.f, call.cg)
            if dxp is not None:
                tap = w[:, :, i, j].reshape(call.groups, call.fg, call.cg)
                dcols = matmul(tap.transpose(0, 2, 1), g).reshape(call.c, call.n, call.oh, call.ow)
                _window(dxp, call, i, j)[...] += dcols.transpose(1, 0, 2, 3)
    dx = None
    if dxp is not None:
        dx = np.ascontiguousarray(dxp[:, :, call.ph : call.ph + call.h, call.pw : call.pw + call.wd])
    db = dy.sum(axis=(0, 2, 3)) if need_db else None
    return dx, dw, db
