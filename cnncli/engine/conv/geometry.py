"""One convolution call described by its shapes alone: what the strategies' rules read, and what their kernels size.

A :class:`Call` is built from shapes (``summarize --paths``, the picker's tests: no array is allocated) or
from the arrays of a call (:func:`checked`, which checks them as every public wrapper does). It answers the
questions of :mod:`cnncli.engine.rules` that depend on more than one number (the unfold's pitch, the groups
of samples, the chunks) once; which strategy runs is :func:`cnncli.engine.conv.strategies.pick`'s answer.
"""

from __future__ import annotations

import operator

import numpy as np

from cnncli.engine import blas, rules
from cnncli.engine.arrays import Pair, array, out_hw, pair

__all__ = ["Call", "Chain", "checked"]

#: A fused chain's activation (``"relu"``, ``"tanh"``) and the side of its tiled average pooling (0: none).
Chain = tuple[str, int]


class Call:
    """Shapes of one convolution call: x (N, C, H, W), w (F, C/groups, KH, KW), and the layer's geometry.

    ``chain``: for the head of a fused chain (conv → activation (→ tiled avgpool), ``Network.fast``), its
    activation and pooling; None for a convolution on its own.
    """

    def __init__(self, x_shape, w_shape, stride: Pair, padding: Pair, dilation: Pair, groups: int, itemsize: int,
                 chain: Chain | None = None):
        self.sh, self.sw = pair("stride", stride, 1)
        self.ph, self.pw = pair("padding", padding, 0)
        self.dh, self.dw = pair("dilation", dilation, 1)
        self.groups = g = operator.index(groups)
        self.n, self.c, self.h, self.wd = (int(d) for d in x_shape)
        self.f, self.cg, self.kh, self.kw = (int(d) for d in w_shape)
        self.itemsize = int(itemsize)
        self.chain = chain
        if g < 1 or self.c % g or self.f % g:
            raise ValueError(f"groups={g} must divide in channels {self.c} and filters {self.f}")
        if self.cg * g != self.c:
            raise ValueError(
                f"w has {self.cg} input channels per group, x has {self.c} channels in {g} groups"
            )
        self.oh, self.ow = out_hw("conv2d", (self.h, self.wd), (self.kh, self.kw), (self.sh, self.sw),
                                  (self.ph, self.pw), (self.dh, self.dw))
        self.hp = self.h + 2 * self.ph
        self.wp = self.wd + 2 * self.pw
        self.unit = self.sh == 1 and self.sw == 1
        self.fg = self.f // g
        self.taps = self.cg * self.kh * self.kw
        # A fused chain's convolution runs in its block (unfold + GEMM, or direct loops where direct_dw), never
        # by the depthwise or tap kernels, which take plain calls only.
        plain = chain is None
        #: Whether the direct loops (cnncli.engine.conv.general) can compute this geometry: stride 1, dilation 1.
        self.loops_fit = self.unit and self.dh == 1 and self.dw == 1
        self.direct = plain and rules.depthwise(self.taps, self.fg, self.loops_fit)
        #: Whether the tap GEMMs' rule takes this layer (cnncli.engine.rules.tap_gemms), which also sets the pitch.
        self.by_taps = plain and self.in_kernel_gemms and rules.tap_gemms(self.unit, self.cg, self.wp, self.ow)
        # the direct kernels and the tap GEMMs read each tap's run of whole padded rows
        wide = self.by_taps or self.direct or rules.flat_rows(self.fg, self.wp, self.ow, self.unit)
        self.pitch = self.wp if wide else self.ow
        self.q = (self.oh - 1) * self.pitch + self.ow
        #: Whether the weight gradient comes from direct dot products (flat rows only): few weights per group.
        self.direct_dw = self.direct or (self.loops_fit and self.pitch == self.wp
                                         and rules.direct_weights(self.taps * self.fg))
        #: Whether the forward pass and both gradients run as direct loops (cnncli.engine.conv.general): a plain
        #: call's thin groups (direct), a fused chain's few weights (direct_dw).
        self.direct_loops = self.direct if plain else self.direct_dw
        # Direct loops need no column matrix, so the whole batch is one chunk; a fused block's chunks are the
        # smaller ones of rules.COLS_BUDGET_BYTES.
        per_sample = 0 if self.direct_loops else self.c * self.kh * self.kw * self.q * self.itemsize
        self.step = rules.chunk_size(self.n, per_sample, rules.CONV_COLS_BUDGET_BYTES if plain else None)

    @property
    def stride(self) -> Pair:
        return self.sh, self.sw

    @property
    def padding(self) -> Pair:
        return self.ph, self.pw

    @property
    def dilation(self) -> Pair:
        return self.dh, self.dw

    @property
    def kernel(self) -> Pair:
        return self.kh, self.kw

    @property
    def in_kernel_gemms(self) -> bool:
        """Whether this call can call GEMMs from its kernels (blas.FUNCTIONS found, no direct loops): what the tap
        and group kernels need."""
        return blas.FUNCTIONS is not None and not self.direct

    def group_plan(self) -> tuple[int, int]:
        """(samples per group, output rows per band) of the group kernels (rules.sample_group)."""
        return rules.sample_group(self.n, self.oh, self.c * self.kh * self.kw * self.pitch * self.itemsize,
                                  self.c * self.kh * self.kw * self.q * self.itemsize)

    def group_gemms(self) -> bool:
        """rules.group_gemms for this call's groups: no more filters than a group (or band) has output positions."""
        per, band = self.group_plan()
        return rules.group_gemms(self.fg, per * min(band, self.oh) * self.ow)

    def tap_plan(self) -> tuple[int, int]:
        """(samples per group, output rows per band) of the tap kernels (rules.tap_plan), on whole padded rows."""
        q = (self.oh - 1) * self.wp + self.ow
        return rules.tap_plan(self.n, self.oh, self.f * self.wp * self.itemsize, self.f * q * self.itemsize)


def checked(x, w, stride, padding, dilation, groups) -> tuple[np.ndarray, np.ndarray, Call]:
    """x and w as C-contiguous arrays of one float dtype, and their call: ValueError naming what does not fit."""
    x = array("x", x, 4)
    w = array("w", w, 4, x.dtype)
    return x, w, Call(x.shape, w.shape, stride, padding, dilation, groups, x.itemsize)
