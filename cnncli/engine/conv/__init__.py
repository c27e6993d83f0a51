"""2-D convolution in NCHW, forward and backward: the plain reference and the strategies a fast network picks.

Layout is NCHW and weights are ``(F, C // groups, KH, KW)``, as in PyTorch, and every result matches
``torch.nn.functional.conv2d`` (same output sizes), so a model file means the same here.

==============  ==================================================================================
reference       the plain convolution, numpy a tap at a time: what ``Network(fast=False)`` runs and
                every strategy is tested against
strategies      the ordered table of strategies (applies, pays, passes) and :func:`pick`
geometry        a call's shapes and the rule inputs derived from them (:class:`Call`)
general         the NCHW kernels of the taps, groups, chunks and depthwise strategies
==============  ==================================================================================

:func:`conv2d_forward` and :func:`conv2d_backward` check their arguments (:mod:`cnncli.engine.arrays`), pick a
strategy for the call (or run the one named) and run it. Arrays keep their floating dtype (float32 or float64)
end to end.
"""

from __future__ import annotations

import numpy as np

from cnncli.engine.arrays import Pair, array
from cnncli.engine.conv import general, reference
from cnncli.engine.conv.general import nchw_fold, nchw_pad, nchw_unfold
from cnncli.engine.conv.geometry import Call, checked
from cnncli.engine.conv.strategies import BACKWARD, FORWARD, STRATEGIES, Strategy, by_name, pick

__all__ = ["BACKWARD", "FORWARD", "STRATEGIES", "Call", "Strategy", "conv2d_backward", "conv2d_forward", "nchw_fold",
           "nchw_pad", "nchw_unfold", "pick", "reference"]


def _strategy(call: Call, pass_: str, name: str | None) -> Strategy:
    """The picked strategy, or the one named, which must run ``pass_`` of ``call`` whether or not it pays."""
    if name is None:
        return pick(call, pass_)
    strategy = by_name(name)
    runner = strategy.forward if pass_ == FORWARD else strategy.backward
    if runner is None or not strategy.applies(call):
        raise ValueError(f"the {name} strategy does not compute the {pass_} pass of this convolution")
    return strategy


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int, strategy: str | None = None) -> np.ndarray:
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    x (N, C, H, W); w (F, C // groups, KH, KW); b (F,) or None.
    Returns y (N, F, OH, OW) with OH = (H + 2*ph - dh*(KH-1) - 1) // sh + 1
    (likewise OW), in the dtype of x. ``strategy``: run that one (it must apply) rather than the picked one.
    """
    x, w, call = checked(x, w, stride, padding, dilation, groups)
    dtype = x.dtype
    if b is None:
        bias = np.empty(0, dtype=dtype)
    else:
        bias = array("b", b, 1, dtype)
        if bias.shape[0] != call.f:
            raise ValueError(f"b must have shape ({call.f},), got {bias.shape}")
    y = np.empty((call.n, call.f, call.oh, call.ow), dtype=dtype)
    return _strategy(call, FORWARD, strategy).forward(general.Geometry(x, w, call), bias, y)


def conv2d_backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, stride: Pair, padding: Pair, dilation: Pair,
                    groups: int, need_dx: bool = True, need_db: bool = True, strategy: str | None = None,
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`conv2d_forward` given dy = dL/dy.

    x (N, C, H, W); w (F, C // groups, KH, KW); dy (N, F, OH, OW).
    Returns (dx (N, C, H, W) or None, dw (F, C // groups, KH, KW), db (F,) or None);
    dx is skipped unless ``need_dx`` (a first layer needs no input gradient),
    db unless ``need_db`` (a layer without bias). ``strategy`` as in :func:`conv2d_forward`.
    """
    x, w, call = checked(x, w, stride, padding, dilation, groups)
    dtype = x.dtype
    dy = array("dy", dy, 4, dtype)
    if dy.shape != (call.n, call.f, call.oh, call.ow):
        raise ValueError(f"dy must have shape {(call.n, call.f, call.oh, call.ow)}, got {dy.shape}")
    db = None
    if need_db:
        db = np.empty(call.f, dtype=dtype)
        general.bias_grad(dy, db)
    dx = np.empty_like(x) if need_dx else None
    dw = np.empty_like(w)
    _strategy(call, BACKWARD, strategy).backward(general.Geometry(x, w, call), dy, dx, dw)
    return dx, dw, db
