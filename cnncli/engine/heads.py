"""The detection heads, by the layer kind that ends a model: each a module of the same functions.

==========  ==========================================================================================
``yolo``    :mod:`cnncli.engine.yolo`: a grid of cells, boxes a cell, objectness and class scores
``localize`` :mod:`cnncli.engine.localize`: one object an image, its class and its box
==========  ==========================================================================================

Each module has ``Head`` (``Head.of(node)``: the settings a graph's node of its kind gives), ``TERMS`` (the loss's
terms), ``ONE_OBJECT`` (whether it finds exactly one object an image), ``encode(boxes, head, size, dtype) -> (target, dropped)``, ``loss(t, target, head) -> (value, gradient,
terms)`` and ``decode(t, head, size) -> (xyxy, score, class)`` of every candidate box. The yolo and localize losses
(:mod:`cnncli.engine.losses`), the detection task (:mod:`cnncli.commands.tasks`) and the trace ask here.
"""

from __future__ import annotations

from types import ModuleType

from cnncli.engine import localize, yolo

HEADS: dict[str, ModuleType] = {"yolo": yolo, "localize": localize}


def of(node) -> ModuleType | None:
    """The head module of a graph's output ``node``, or None when it is no detection head."""
    return HEADS.get(node.kind)
