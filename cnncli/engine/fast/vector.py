"""What both fused blocks inline: activation codes, a vectorisable float32 tanh, a kernel row's weights.

float32 tanh is a rational approximation (Eigen's) that LLVM vectorises inside
the blocks' kernels, so that the activation and the pooling share one pass over
the output; Numba's ``math.tanh`` is a scalar call many times slower than
numpy's SIMD tanh. float64 (the gradient checks) uses the exact ``math.tanh``.
Its error against the exact tanh is bounded in ulps by a test.
"""

from __future__ import annotations

import numpy as np

from cnncli.engine.jit import vector_kernel

__all__ = ["ACTIVATIONS", "row5", "tanh32"]

#: Activation codes of the kernels, by layer kind.
ACTIVATIONS = {None: 0, "relu": 1, "tanh": 2}


# Eigen's fast float tanh: odd degree 13 over even degree 6, as float32
# constants so that the arithmetic stays in float32 lanes.
_TANH_CLAMP = np.float32(7.90531110763549805)
# Below this tanh(z) rounds to z itself (z³/3 is under half an ulp of z), and the
# rational function would lose bits to subnormal products for the tiniest z.
_TANH_TINY = np.float32(0.0004)
_TANH_P = tuple(np.float32(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                        5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                        4.89352455891786e-03))
_TANH_Q = tuple(np.float32(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                        4.89352518554385e-03))


@vector_kernel
def tanh32(z):
    # tanh of a float32 as a rational function on [-7.9053, 7.9053] (float32
    # tanh is +-1 beyond), z itself for tiny z; within 5 ulp of the correctly
    # rounded tanh as the kernels run it (a test measures it). Plain
    # arithmetic, so that LLVM vectorises it: Numba's math.tanh is a scalar
    # call, far slower than numpy's SIMD tanh, and this lets the activation
    # and the pooling share one pass over the output.
    c = _TANH_CLAMP
    z = min(max(z, -c), c)
    z2 = z * z
    p0, p1, p2, p3, p4, p5, p6 = _TANH_P
    q0, q1, q2, q3 = _TANH_Q
    p = z2 * p0 + p1
    p = z2 * p + p2
    p = z2 * p + p3
    p = z2 * p + p4
    p = z2 * p + p5
    p = z2 * p + p6
    q = z2 * q0 + q1
    q = z2 * q + q2
    q = z2 * q + q3
    # A select, not a branch: the loop still vectorises.
    return z if abs(z) < _TANH_TINY else z * p / q


@vector_kernel
def row5(w, f, c, i):
    # The five weights of kernel row i of filter f, channel c: the unrolled
    # 5-wide loops hold them in registers.
    return w[f, c, i, 0], w[f, c, i, 1], w[f, c, i, 2], w[f, c, i, 3], w[f, c, i, 4]
