"""A layer named on the command line: the one rule of every flag that names one (``--layer``, ``--freeze``).

A name is a layer's, as ``cnncli summarize MODEL`` lists it (``conv1``, ``layer3.1.conv2``), or a
block's: a block, or a group of blocks, is every layer whose name starts with the name and a dot
(``layer3``: every ``layer3.*``, as PyTorch names modules; ``layer3.1``; ``inception4a``). A layer's own
name wins over a block of the same name.

A block stands for its output, its last layer in network order: what the layers after it read (the
model file's own rule, :mod:`cnncli.model.spec`: a block's output is its last layer). In a residual
block that is the ReLU after the add, in an inception block the concatenation of its branches. So
``--layer layer3`` shows or explains the output of ResNet's third stage, and ``--freeze layer3`` freezes
up to and including it. For Grad-CAM the block's output, not its last convolution, is the layer: the
convolution's raw output misses the batch norm, the shortcut and the ReLU that make what the rest of the
network (and so the class score) reads, and the method's authors take the rectified maps of the last
convolutional stage (VGG-16's conv5_3 after its ReLU), as :func:`cnncli.commands.explain.default_layer` does.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from cnncli.errors import UsageError
from cnncli.model.spec import ModelSpec, NodeSpec
from cnncli.words import listed

#: Names listed in the message for a name the model does not have (all of them: ``cnncli summarize``).
SHOWN = 12


@dataclass(frozen=True)
class Named:
    """What a name given to a flag names: ``layers`` in network order, one layer or a block's."""

    name: str
    layers: tuple[str, ...]

    @property
    def output(self) -> str:
        """The layer the name stands for: the layer itself, or the block's output (its last layer)."""
        return self.layers[-1]

    @property
    def is_block(self) -> bool:
        return self.layers != (self.name,)


def in_block(node: NodeSpec, block: str) -> bool:
    """Whether ``node`` is one of the layers of ``block`` (a block instance or a group of them)."""
    return block in node.scope or node.name.startswith(block + ".")


def resolve(model_spec: ModelSpec, name: str, flag: str, *, nodes: Sequence[NodeSpec] | None = None,
            model: str | None = None, also: Sequence[str] = (), also_hint: str = "") -> Named:
    """The layer or block ``name`` (given to ``flag``) names among ``nodes`` (the model's by default; a graph
    may hold fewer: no auxiliary heads at inference). A :class:`UsageError` for a name it does not have: the
    closest names, the top-level names (cut with "…" when there are many) and the command that lists them
    all (``model``: the model as the user gave it, its name by default). ``also``: other words the flag takes
    (``backbone``), offered as close names; ``also_hint`` says what they do."""
    every = model_spec.nodes
    nodes = list(every if nodes is None else nodes)
    found = _named(nodes, name)
    if found:
        return Named(name, found)
    if _named(every, name):
        raise UsageError(f"{flag} {name}: the layers of that name feed only an auxiliary training head, which is "
                         "left out when the network predicts; name a layer of the main network")
    groups = {n.name.rsplit(".", k)[0] for n in nodes for k in range(1, n.name.count(".") + 1)}
    candidates = [n.name for n in nodes] + sorted(groups | {s for n in nodes for s in n.scope}) + list(also)
    close = difflib.get_close_matches(name, candidates, n=3)
    hint = f" — did you mean {', '.join(repr(c) for c in close)}?" if close else "."
    top = list(dict.fromkeys(n.name.split(".")[0] for n in nodes))
    inner = next((n.name for n in nodes if "." in n.name), None)
    inside = f"; a block's layers go on after a dot, as {inner}" if inner else ""
    raise UsageError(f"{flag} {name}: model '{model_spec.name}' has no layer or block of that name{hint} "
                     f"Its layers and blocks: {listed(top, SHOWN)}{inside}{also_hint}. "
                     f"`cnncli summarize {model or model_spec.name}` lists every name")


def _named(nodes: Sequence[NodeSpec], name: str) -> tuple[str, ...]:
    exact = tuple(n.name for n in nodes if n.name == name)
    return exact or tuple(n.name for n in nodes if in_block(n, name))
