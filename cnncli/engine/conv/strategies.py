"""The convolution's strategies, in the order they are tried, and the one function that picks among them.

Every convolution a fast network runs, on its own (:class:`cnncli.engine.layers.Conv`) or at the head of a
fused chain (:class:`cnncli.engine.layers.FusedConv`), is one :class:`~cnncli.engine.conv.geometry.Call`,
and :func:`pick` gives it the first strategy of :data:`STRATEGIES` that *applies* (can compute it) and
*pays* (is the faster path there, by the thresholds of :mod:`cnncli.engine.rules`) for that pass. The
engine map (:mod:`cnncli.engine`) lists the same table; a test holds the two equal.

A strategy gives the forward pass and the backward pass (input and weight gradients) of the call, or, for
the fused blocks, a block class that runs the chain's convolution, activation and pooling in one pass each
way. ``outer`` has a forward pass only: its layers' backward pass is picked among the strategies after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cnncli.engine import blas, rules, simd
from cnncli.engine.conv import general
from cnncli.engine.conv.geometry import Call
from cnncli.engine.fast import fused, lanes

__all__ = ["BACKWARD", "FORWARD", "STRATEGIES", "Strategy", "by_name", "pick"]

FORWARD = "forward"
BACKWARD = "backward"


@dataclass(frozen=True)
class Strategy:
    """One way to compute a convolution: when it applies, when it pays (``pays(call, pass)``), and its passes.

    ``forward(geo, bias, y)`` and ``backward(geo, dy, dx, dw)`` run a plain convolution
    (:mod:`cnncli.engine.conv.general`'s conventions); ``block`` is instead the fused block class that runs
    a whole chain. ``file`` is where its kernels are, under ``cnncli/engine``.
    """

    name: str
    file: str
    applies: Callable[[Call], bool]
    pays: Callable[[Call, str], bool]
    forward: Callable | None = None
    backward: Callable | None = None
    block: type | None = None

    def runs(self, call: Call, pass_: str) -> bool:
        """Whether this strategy runs ``pass_`` of ``call`` when every strategy before it declines."""
        has = self.block is not None or (self.forward if pass_ == FORWARD else self.backward) is not None
        return has and self.applies(call) and self.pays(call, pass_)


def _plain(call: Call) -> bool:
    """A convolution on its own, not the head of a fused chain."""
    return call.chain is None


def _chain(call: Call) -> bool:
    """The head of a fused chain: a convolution of stride 1, dilation 1, one group (FusedConv.fits)."""
    return call.chain is not None and call.unit and call.dilation == (1, 1) and call.groups == 1


def _winograd_applies(call: Call) -> bool:
    # at the head of a conv → relu chain too: the ReLU then runs in place on its output
    return (call.chain in (None, ("relu", 0))
            and rules.winograd_applies(call.kernel, call.stride, call.dilation, call.groups))


def _always(call: Call, pass_: str = FORWARD) -> bool:
    return True


#: The strategies, in the order :func:`pick` tries them.
STRATEGIES: tuple[Strategy, ...] = (
    Strategy("winograd", "winograd.py", _winograd_applies,
             lambda call, p: rules.winograd_pays(call.c, call.n, call.oh, call.ow),
             general.winograd_forward, general.winograd_backward),
    Strategy("lanes", "fast/lanes.py", _chain,
             lambda call, p: rules.lanes(call.n, call.f * call.taps,
                                         call.taps * call.oh * call.ow * call.n * call.itemsize),
             block=lanes.Block),
    Strategy("fused", "fast/fused.py", _chain, _always, block=fused.Block),
    Strategy("blocked", "blocked.py",
             lambda call: _plain(call) and rules.blocked_applies(call.stride, call.padding, call.kernel,
                                                                 call.dilation, call.groups),
             lambda call, p: rules.blocked_pays(call.c, call.f, call.kh * call.kw, simd.VECTOR_REGISTERS),
             general.blocked_forward, general.blocked_backward),
    Strategy("outer", "blocked.py",
             lambda call: _plain(call) and rules.outer_applies(call.stride, call.groups, call.f,
                                                               simd.lanes(call.itemsize)),
             lambda call, p: rules.outer_pays(call.c),
             general.blocked_forward),
    Strategy("depthwise", "conv/general.py", lambda call: _plain(call) and call.loops_fit,
             lambda call, p: call.direct,
             general.depthwise_forward, general.depthwise_backward),
    Strategy("taps", "conv/general.py",
             lambda call: _plain(call) and call.unit and blas.FUNCTIONS is not None,
             lambda call, p: call.by_taps and (p == FORWARD or not call.direct_dw),
             general.taps_forward, general.taps_backward),
    Strategy("groups", "conv/general.py", lambda call: _plain(call) and blas.FUNCTIONS is not None,
             lambda call, p: call.in_kernel_gemms and call.group_gemms() and (p == FORWARD or not call.direct_dw),
             general.groups_forward, general.groups_backward),
    Strategy("chunks", "conv/general.py", _plain, _always, general.chunks_forward, general.chunks_backward),
)

_BY_NAME = {s.name: s for s in STRATEGIES}


def by_name(name: str) -> Strategy:
    """The strategy called ``name``; ValueError naming the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"no convolution strategy {name!r}: one of {', '.join(_BY_NAME)}") from None


def pick(call: Call, pass_: str = FORWARD) -> Strategy:
    """The strategy that runs ``pass_`` (FORWARD or BACKWARD) of ``call``: the first of STRATEGIES that runs it.

    A fused chain's block runs both passes, so a chain is picked for the forward pass only; ``chunks`` (a
    plain call) and ``fused`` (a chain) take whatever reaches them.
    """
    for strategy in STRATEGIES:
        if strategy.runs(call, pass_):
            return strategy
    raise AssertionError(f"no strategy takes {pass_} of a convolution: chunks and fused take every call")
