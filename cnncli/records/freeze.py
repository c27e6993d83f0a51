"""``train --freeze``: which layers of a network do not learn in a run (fine-tuning).

``--freeze NAME`` freezes the layer of that name, or the block or group of layers (``layer3``: every
``layer3.*``, as PyTorch names modules; :mod:`cnncli.model.naming`, the rule ``--layer`` follows too), and
every layer before it in network order, the order of the model file (``cnncli summarize`` lists it);
``--freeze backbone`` freezes every layer but the model's heads (:mod:`cnncli.model.head`). The layers
after the frozen part train.

What frozen means (:attr:`cnncli.model.graph.Node.frozen`, the one flag the engine reads):

* its parameters get no gradient and no update, weight decay included: the optimizer never sees them;
* a frozen batch norm normalises with its running statistics while training too, and leaves them as they
  are. This is torchvision's choice for the frozen stages of its detection backbones
  (``models/detection/backbone_utils.py``: ``requires_grad_(False)`` and ``FrozenBatchNorm2d``): the
  statistics belong to the weights that were learnt with them, and re-estimating them from the small
  batches of a small dataset would shift every feature that the frozen layers compute;
* the backward pass stops where no layer upstream learns (:class:`cnncli.engine.network.Network`), so
  a frozen backbone costs its forward pass alone.

Freezing is a setting of the run, not a change of the network: the checkpoint holds every weight, its
fingerprint is the network's (:meth:`cnncli.model.spec.ModelSpec.fingerprint`), and every other command
loads it as any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnncli.errors import UsageError
from cnncli.model import head, naming
from cnncli.model.kinds import is_parametric
from cnncli.model.spec import ModelSpec

#: ``--freeze backbone``: every layer but the heads.
BACKBONE = "backbone"


@dataclass(frozen=True)
class Freeze:
    """The frozen part of a network: ``layers`` (node names) up to ``last``, as ``value`` (the flag) said."""

    value: str
    last: str
    layers: frozenset[str]


def choose(model_spec: ModelSpec, value: str, model: str | None = None) -> Freeze:
    """The layers ``--freeze value`` freezes in ``model_spec``; a :class:`UsageError` for a name the model does
    not have (:func:`cnncli.model.naming.resolve`; ``model``: the model as the user gave it), for ``backbone``
    in a model without a head, or when nothing would train."""
    nodes = model_spec.nodes
    if value == BACKBONE:
        heads = {h.name for h in head.heads(model_spec)}
        if not heads:
            raise UsageError(f"--freeze {BACKBONE}: model '{model_spec.name}' has no dense layer making its "
                             "output (its head), so there is no backbone to tell from it; name the last layer "
                             f"to freeze instead (`cnncli summarize {model or model_spec.name}` lists them)")
        frozen = [n.name for n in nodes if n.name not in heads]
    else:
        last = naming.resolve(model_spec, value, "--freeze", model=model, also=(BACKBONE,),
                              also_hint=f"; --freeze {BACKBONE} freezes every layer but the head").output
        names = [n.name for n in nodes]
        frozen = names[:names.index(last) + 1]
    layers = frozenset(frozen)
    learning = [n for n in nodes if n.name not in layers and is_parametric(n.kind)
                and n.options.get("trainable", True)]
    if not learning:
        raise UsageError(f"--freeze {value} freezes every layer of '{model_spec.name}' that learns: nothing would "
                         f"train; name an earlier layer, or --freeze {BACKBONE}")
    return Freeze(value, frozen[-1], layers)
