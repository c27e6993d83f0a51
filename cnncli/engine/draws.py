"""Random draws that do not depend on how a batch is split: a counter-based generator for dropout.

A dropout mask drawn from one sequential generator depends on the order in
which samples ask for numbers, so a batch split into parts would draw other
masks than the whole batch. Here every element's number is a hash of its
coordinates instead: (seed, layer, training pass) make a key, and the
element's index in the whole batch (sample index × values per sample +
offset) is hashed with it by SplitMix64's finaliser (Steele, Lea & Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014; the
mixing constants are Stafford's "Mix13"). A part computes the masks of its own
samples only, and they equal the whole batch's. A run's state is then just the
number of training passes made, which a checkpoint already holds (the step).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnncli.engine.jit import kernel, parallel_kernel

__all__ = ["dropout_mask", "key", "uniform"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S11 = np.uint64(11)
_UNIT = 1.0 / 9007199254740992.0  # 2**-53


@kernel
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@kernel
def _key(seed, layer, draw):
    k = _mix(np.uint64(seed) + _GOLDEN)
    k = _mix(k ^ (np.uint64(layer) + _GOLDEN))
    return _mix(k ^ (np.uint64(draw) + _GOLDEN))


@kernel
def _uniform(k, index):
    return np.float64(_mix(k + np.uint64(index) * _GOLDEN) >> _S11) * _UNIT


@parallel_kernel
def _mask(k, first, rate, scale, out):
    for i in prange(out.size):
        out[i] = scale if _uniform(k, first + i) >= rate else 0.0


def key(seed: int, layer: int, draw: int) -> int:
    """The key of one layer's draws in one training pass (all three non-negative)."""
    if min(seed, layer, draw) < 0:
        raise ValueError(f"seed, layer and draw must be non-negative, got {seed}, {layer}, {draw}")
    return int(_key(seed, layer, draw))


def uniform(k: int, index: np.ndarray) -> np.ndarray:
    """The numbers in [0, 1) that key ``k`` gives the elements at ``index`` (a slow reference for tests)."""
    return np.array([_uniform(np.uint64(k), int(i)) for i in np.asarray(index).ravel()]).reshape(np.shape(index))


def dropout_mask(shape: tuple[int, ...], start: int, rate: float, k: int, dtype) -> np.ndarray:
    """The mask of samples ``start``… of a batch: shape (n, ...) of 0 and 1/(1 − rate), keep-probability 1 − rate.

    Element j of sample i (i counted from the batch's first sample) keeps
    its value when ``uniform(k, i·m + j) >= rate``, m the values per sample.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    out = np.empty(shape, dtype=dtype)
    per_sample = int(np.prod(shape[1:], dtype=np.int64))
    _mask(np.uint64(k), np.int64(start * per_sample), float(rate), out.dtype.type(1 / (1 - rate)), out.reshape(-1))
    return out
