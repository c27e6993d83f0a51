"""Initial parameter values: inline numbers, a named scheme, or PyTorch's default.

A layer's ``init`` (in its model file) is a scheme name for all its
parameters, or a mapping from parameter to a scheme name or numbers; the names
are :data:`cnncli.model.graph.INIT_SCHEMES`, validated there, and
:data:`SCHEMES` implements each one (a test holds the two equal). Batch-norm
scale and shift start at 1 and 0 whatever the scheme, except ``zeros``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnncli.model.graph import Node

__all__ = ["SCHEMES", "initial_value"]


def _fan_in(node: Node) -> int:
    shape = node.params["weight"]
    if node.kind == "dense":
        return shape[0]
    if node.kind == "subsample":
        return node.options["kernel"][0] * node.options["kernel"][1]
    return math.prod(shape[1:])


def _fan_out(node: Node) -> int:
    shape = node.params["weight"]
    if node.kind == "dense":
        return shape[1]
    return shape[0] * math.prod(shape[2:]) if len(shape) == 4 else shape[0]


def _default(node: Node, suffix: str, shape, rng: np.random.Generator, dtype) -> np.ndarray:
    # PyTorch's kaiming_uniform(a=√5) for weights and its bias rule both reduce to ±1/√fan_in.
    bound = 1.0 / math.sqrt(_fan_in(node))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _he(node: Node, suffix: str, shape, rng: np.random.Generator, dtype) -> np.ndarray:
    if suffix == "bias":
        return np.zeros(shape, dtype=dtype)
    return (rng.standard_normal(shape) * math.sqrt(2.0 / _fan_in(node))).astype(dtype)


def _xavier(node: Node, suffix: str, shape, rng: np.random.Generator, dtype) -> np.ndarray:
    if suffix == "bias":
        return np.zeros(shape, dtype=dtype)
    bound = math.sqrt(6.0 / (_fan_in(node) + _fan_out(node)))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _zeros(node: Node, suffix: str, shape, rng: np.random.Generator, dtype) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


#: scheme name -> fn(node, suffix, shape, rng, dtype) -> array
SCHEMES = {"default": _default, "he": _he, "xavier": _xavier, "zeros": _zeros}


def initial_value(node: Node, suffix: str, rng: np.random.Generator, dtype) -> np.ndarray:
    """The initial array of parameter ``suffix`` (``weight``, ``bias``) of ``node``, drawn from ``rng``."""
    shape = node.params[suffix]
    init = node.spec.init
    scheme: Any = init.get(suffix, "default") if isinstance(init, dict) else (init or "default")
    if not isinstance(scheme, str):
        return np.broadcast_to(np.asarray(scheme, dtype=dtype), shape).copy()
    if node.kind == "batchnorm" and scheme != "zeros":
        return (np.ones if suffix == "weight" else np.zeros)(shape, dtype=dtype)
    return SCHEMES[scheme](node, suffix, shape, rng, dtype)
