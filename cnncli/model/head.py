"""A classifier's head, the dense layer whose units are the classes, and sizing it to a dataset.

A model file is written for one dataset (``classes: 10`` and a last ``dense: {name: fc, units: 10}``);
on a dataset with another number of classes the same network is wanted with another head. The **head**
of an output is found by walking back from the output node through layers that learn nothing and keep
their input's shape (:func:`~cnncli.model.kinds.passes_through`: activations, softmax, dropout); the
layer reached is the head if it is a dense layer

* whose output nothing else reads (resizing it changes no other layer's shape), and
* whose initial values the file does not write out as numbers (those have the file's size).

A detector's head is the convolution a ``yolo`` output reads (alone, as it is, of ``5B + C`` filters: five
numbers a box, then one score a class), under the same two conditions; its size in classes is its filters less
the boxes' ``5B``. A localizer's is the dense layer a ``localize`` output reads, its units the classes and 4.

A model's heads are its main output's head and, for a model with auxiliary classifiers (GoogLeNet), each
auxiliary output's. A model whose main output or one of whose auxiliary outputs has no head has no heads
at all: its outputs are what the file says, and a dataset with another number of classes is refused as
before (:func:`cnncli.records.inputs.check_outputs`).

:func:`resize` is the one transformation: a new :class:`~cnncli.model.spec.ModelSpec` whose heads have
``classes`` units (and ``classes: classes``), with the changes as records for a run's header. Graph,
network, fingerprint and checkpoint keys all follow from that spec: the head's parameter shapes change
(dense ``weight`` (in, classes), ``bias`` (classes,)), its names do not. A run records the classes it was
sized for in its configuration, so that every command loading its weights rebuilds the same network
(:mod:`cnncli.records.trained`). Weights that record no classes (a PyTorch state dict, such as ``export --to
torch`` writes) hold them in their shapes: :func:`units_held` reads the size from the head's weight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from cnncli.errors import CheckpointError
from cnncli.model.kinds import KINDS, fmt_shape, passes_through
from cnncli.model.spec import ModelSpec, NodeSpec

__all__ = ["HeadChange", "Resized", "heads", "resize", "units_held"]


@dataclass(frozen=True)
class HeadChange:
    """Head ``layer`` sized from ``before`` to ``after`` units; ``aux``: an auxiliary classifier's; ``unit``: what
    the numbers count (a detector's head has five filters a box besides its classes: it counts classes)."""

    layer: str
    before: int
    after: int
    aux: bool = False
    unit: str = "units"


@dataclass(frozen=True)
class Resized:
    """A model sized for a number of classes, and what changed (nothing: ``changes`` is empty)."""

    spec: ModelSpec
    changes: tuple[HeadChange, ...] = ()


def _readers(model_spec: ModelSpec) -> dict[str, list[str]]:
    readers: dict[str, list[str]] = {}
    for n in model_spec.nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n.name)
    return readers


def _numbers_written_out(init) -> bool:
    return isinstance(init, dict) and any(isinstance(v, list) for v in init.values())


def _reserved(model_spec: ModelSpec, h: NodeSpec) -> int:
    """The outputs of head ``h`` that are not classes: a detector's ``5B`` box numbers, a localizer's 4; a
    classifier's none."""
    output = model_spec.node(model_spec.output)
    return KINDS[output.kind].reserved(output.options) if list(output.inputs) == [h.name] else 0


def _size_key(h: NodeSpec) -> str:
    return "filters" if h.kind == "conv" else "units"


def _head_of(model_spec: ModelSpec, output: str, readers: dict[str, list[str]]) -> NodeSpec | None:
    """The dense layer that makes ``output``, or the convolution a yolo output reads (see the module docstring),
    or None."""
    node = model_spec.node(output)
    if node.kind == "localize":
        (source,) = node.inputs
        dense = None if source == "input" else model_spec.node(source)
        if dense is None or dense.kind != "dense" or _numbers_written_out(dense.init) \
                or readers.get(dense.name, []) != [node.name]:
            return None
        return dense
    if node.kind == "yolo":
        (source,) = node.inputs
        if source == "input":
            return None
        conv = model_spec.node(source)
        plain = conv.kind == "conv" and conv.options["groups"] == 1 and conv.options["connections"] is None
        if not plain or _numbers_written_out(conv.init) or readers.get(conv.name, []) != [node.name]:
            return None
        return conv
    chain = [node.name]
    while passes_through(node.kind):
        (source,) = node.inputs
        if source == "input":
            return None
        node = model_spec.node(source)
        chain.append(node.name)
    if node.kind != "dense" or _numbers_written_out(node.init):
        return None
    # Between the head and the output every layer is read by the next one alone.
    if any(readers.get(name, []) != [after] for name, after in zip(chain[1:], chain)):
        return None
    return node


def heads(model_spec: ModelSpec) -> tuple[NodeSpec, ...]:
    """The model's heads: the main output's first, then each auxiliary output's; empty when it has none."""
    readers = _readers(model_spec)
    outputs = [model_spec.output] + [n.name for n in model_spec.nodes if n.aux is not None]
    found = [_head_of(model_spec, o, readers) for o in outputs]
    if any(h is None for h in found):
        return ()
    return tuple(h for h in found if h is not None)


def resize(model_spec: ModelSpec, classes: int) -> Resized:
    """``model_spec`` with every head sized to ``classes`` units; itself (no changes) when they have that size
    already or the model has no heads."""
    found = heads(model_spec)
    changes = tuple(HeadChange(h.name, h.options[_size_key(h)] - _reserved(model_spec, h), classes, aux=i > 0,
                               unit="classes" if _reserved(model_spec, h) else "units")
                    for i, h in enumerate(found) if h.options[_size_key(h)] - _reserved(model_spec, h) != classes)
    if not changes:
        return Resized(model_spec)
    changed = {h.name: h for h in found if h.name in {c.layer for c in changes}}
    nodes = [dataclasses.replace(n, options={**n.options, _size_key(n): classes + _reserved(model_spec, n)})
             if n.name in changed else n for n in model_spec.nodes]
    return Resized(dataclasses.replace(model_spec, nodes=nodes, classes=classes), changes)


def units_held(model_spec: ModelSpec, weights: Mapping, shapes: Mapping[str, tuple[int, ...]],
               source: str) -> int | None:
    """The units of the heads in ``weights`` (arrays under cnncli's names, in its layouts), read from each
    head's dense weight, (inputs, units); None when the model has no heads or ``weights`` hold none of them.

    ``shapes``: the model's parameter shapes as its file sizes it (what the heads' inputs are). A head weight
    that fits no number of units (another number of inputs, or not a matrix), or heads held with different
    units, are a :class:`~cnncli.errors.CheckpointError` naming ``source`` and the weight.
    """
    held: dict[str, int] = {}
    for h in heads(model_spec):
        key = f"{h.name}.weight"
        if key not in weights:
            continue  # weights without this head (a backbone's; the inference network's, without aux heads)
        got, want = tuple(weights[key].shape), tuple(shapes[key])
        reserved = _reserved(model_spec, h)
        if h.kind == "conv":  # (filters, inputs, kh, kw): filters = 5B + classes
            if len(got) != 4 or got[1:] != want[1:] or got[0] <= reserved:
                raise CheckpointError(
                    f"{source}: its head weight '{key}' has shape {fmt_shape(got)}, which fits no number of classes: "
                    f"{h.name} is {fmt_shape(want[1:])} a filter in this model, with {reserved} filters for the "
                    f"boxes and one a class (are these weights of another model?)")
            held[h.name] = got[0] - reserved
            continue
        if len(got) != 2 or got[0] != want[0] or got[1] <= reserved:
            raise CheckpointError(f"{source}: its head weight '{key}' has shape {fmt_shape(got)} (inputs × units), "
                                  f"which fits no number of classes: {h.name} takes {want[0]} inputs in this model, so its weight "
                                  f"is {want[0]}×N for N classes (are these weights of another model?)")
        held[h.name] = got[1] - reserved
    if len(set(held.values())) > 1:
        sizes = ", ".join(f"{name} {units}" for name, units in held.items())
        raise CheckpointError(f"{source}: its heads have different numbers of units ({sizes}); a model's heads all "
                              "have one per class")
    return next(iter(held.values()), None)
