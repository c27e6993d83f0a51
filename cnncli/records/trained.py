"""A trained model, loaded: the one way every command that reads weights builds its network.

``eval``, ``predict``, ``features``, ``export`` and ``backprop-trace --weights`` all need the same
thing: the network the weights were trained as, holding them, and the way images were prepared for
it. :func:`load` makes it, as a :class:`Trained` record (spec, graph, checkpoint, data source, input
plan, network), checking in this order, each a message and exit status 2 when it fails:

1. what reading the weights and the dataset needs, before any work (a weights file that exists, the
   images extra for an image folder);
2. the model file, then the weights (:func:`open_weights`: a file, or published
   weights the model file names, such as ``imagenet``, found or downloaded and verified; a
   :class:`~cnncli.errors.CheckpointError` for anything wrong with them);
3. the head: a run records the classes its network was sized for (``train`` sizes a model's head to
   its dataset, :mod:`cnncli.model.head`), and the model is sized the same way (:func:`as_trained`);
   weights alone, which record no model (a PyTorch state dict), are sized as their head weight is
   (:func:`cnncli.model.head.units_held`; :attr:`Trained.head` says what changed), or to the dataset's
   classes when they hold no head;
4. the model check, against that sized network: weights trained for another network are refused
   unless ``skip_model_check`` (:meth:`~cnncli.records.checkpoint.Checkpoint.check_model`);
5. the data (``data``): its images must fit the model's input (:func:`cnncli.records.inputs.plan`), and the
   network must give one output per class, the classes the weights were trained for (as recorded, or
   as their head holds them; :func:`cnncli.records.inputs.check_outputs`);
6. the weights' names and shapes, loading them into the network (:func:`network`): a missing,
   unexpected or misshapen array is a CheckpointError naming it; weights of auxiliary heads are
   skipped when the graph leaves them out (``aux=False``, what inference runs).

Where the data comes from (``data``): :data:`OPEN` opens the dataset (``--dataset``, else the one the
weights were trained on, else the model file's); :data:`RECORDED` takes the classes and statistics
the checkpoint recorded of its dataset when no ``--dataset`` is given, so that no data is needed
(an image file's prediction); ``None`` reads no data at all (``export``: the graph alone).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from cnncli.data import class_lists
from cnncli.data.source import FOLDER, Source, check_readable, open_source
from cnncli.engine.network import Network
from cnncli.errors import CheckpointError, UsageError
from cnncli.model import head, spec
from cnncli.model.graph import Graph, build
from cnncli.records import checkpoint as ckpt_io
from cnncli.records import inputs, published
from cnncli.words import count

__all__ = ["OPEN", "RECORDED", "Trained", "as_trained", "class_list_of", "load", "network"]

#: ``data``: open the dataset; or take the checkpoint's record of it when no dataset is given.
OPEN, RECORDED = "open", "recorded"


def open_weights(value: str | os.PathLike[str], model_spec, progress=None) -> ckpt_io.Checkpoint:
    """The weights ``--weights VALUE`` names for ``model_spec``: the published weights its model file registers
    under that name (``imagenet``; :mod:`cnncli.records.published`: found or downloaded, verified, ``progress``
    receiving the download's events), else a file (:func:`cnncli.records.checkpoint.load`; a PyTorch state dict
    in the layout of the model's published weights is named as they are, :func:`published.in_layout`). The name of
    published weights that this model has none of, when no such file exists, is a :class:`UsageError` listing
    the models that have them."""
    name = os.fspath(value)
    if name in model_spec.weights:
        return published.open_published(model_spec, name, progress)
    path = Path(value)
    if not path.exists() and ckpt_io.bare_name(path):
        published.check_name(name, model_spec)
    return published.in_layout(ckpt_io.load(value), model_spec)


#: From this many classes on, top-5 is the measure shown by default (ImageNet's, CIFAR-100's); top-3 below.
TOP5_CLASSES = 100


def default_top_k(classes: int) -> int:
    """How many top classes eval scores and predict shows when the user does not say: see :data:`TOP5_CLASSES`."""
    return 5 if classes >= TOP5_CLASSES else 3


@dataclass
class Trained:
    """A model with its trained weights: what :func:`load` returns."""

    spec: spec.ModelSpec              # the network as trained (its head sized to the classes it learnt)
    graph: Graph
    checkpoint: ckpt_io.Checkpoint
    source: Source | None             # the data, as the run prepared it (None: no data asked for)
    plan: inputs.InputPlan | None     # how the source's images become the network's input
    network: Network
    #: The heads sized as the weights file holds them, when it records no classes (a PyTorch state dict):
    #: what commands name in their output (``head: fc: 10 → 3 units, from the weights file``).
    head: tuple[head.HeadChange, ...] = ()


def as_trained(model_spec: spec.ModelSpec, saved: ckpt_io.Checkpoint) -> spec.ModelSpec:
    """``model_spec`` with its head sized to the classes ``saved`` was trained for (itself when it records
    none, or has that size)."""
    return head.resize(model_spec, saved.classes).spec if saved.classes else model_spec


def load(model: str, weights: str | os.PathLike[str], *, dataset: str | None = None,
         data_dir: Path | None = None, data: str | None = OPEN, skip_model_check: bool = False,
         progress=None, aux: bool = False, fast: bool = True, dtype: str | None = None) -> Trained:
    """``model`` (a built-in name or a model file) with the ``weights`` it was trained to; see the module
    docstring for what is checked, in which order.

    ``progress`` receives the download (or decoding) events of the dataset and of published weights; ``aux`` keeps the auxiliary heads
    in the graph (what training runs); ``fast`` builds a network for inference, ``fast=False`` one that
    keeps every layer's output (:class:`~cnncli.engine.network.Network`); ``dtype`` is the checkpoint's
    unless given.
    """
    ckpt_io.check_readable(weights)
    if dataset is not None:
        check_readable(dataset)
    model_spec = spec.load(model)
    saved = open_weights(weights, model_spec, progress)
    model_spec = as_trained(model_spec, saved)
    alone = saved.classes is None and not isinstance(saved.config.get("name"), str)  # weights, no run's record
    held = _units_held(model_spec, saved) if alone else None
    if alone and (note := published.read_as_published(saved, model_spec, held)):
        warnings.warn(note, ckpt_io.CheckpointNote, stacklevel=2)
    sized = head.resize(model_spec, held) if held else head.Resized(model_spec)
    model_spec = sized.spec
    saved.check_model(model_spec, skip_model_check)
    source = plan = None
    if data is not None:
        source = _source(saved, model_spec, dataset, data_dir, data, progress)
        classes = len(source.classes)
        if alone and held is None:
            model_spec = head.resize(model_spec, classes).spec  # weights without a head: the data says
        elif saved.classes is not None and saved.classes != classes:
            raise UsageError(f"{saved.path} was trained for {count(saved.classes, 'class')}, but {source.title} "
                             f"has {classes}: give a dataset of the classes it was trained for")
        elif held is not None and held != classes:
            layers = ", ".join(h.name for h in head.heads(model_spec))
            raise UsageError(f"{saved.path} records no classes, and its head ({layers}) has {count(held, 'unit')}, "
                             f"so it was trained for {count(held, 'class')}, but {source.title} has {classes}: give "
                             "the dataset it was trained on (--dataset, and --data-dir for an image folder)")
    graph = build(model_spec, aux=aux)
    if source is not None:
        plan = inputs.plan(source.title, source.image_shape, graph.input_shape, model_spec.name)
        inputs.check_outputs(graph[graph.output], len(source.classes), source.title, model_spec.name)
    net = network(model_spec, graph, saved, fast=fast, dtype=dtype)
    return Trained(model_spec, graph, saved, source, plan, net, sized.changes)


def _units_held(model_spec: spec.ModelSpec, saved: ckpt_io.Checkpoint) -> int | None:
    """The units of the heads in weights that record no classes (:func:`cnncli.model.head.units_held`).

    A head weight that fits no number of classes is named as such when the rest of the weights fit the
    model; when they do not either, these are weights of another network: None, and the load names the first
    array that does not fit, as for any other weights."""
    if not head.heads(model_spec):
        return None
    graph = build(model_spec, aux=True)  # the auxiliary heads too: weights written for training hold them
    layers = {h.name for h in head.heads(model_spec)}
    try:
        return head.units_held(model_spec, saved.weights_for(graph, {f"{h}.weight" for h in layers}),
                               graph.param_shapes(), str(saved.path))
    except CheckpointError:
        wanted = {**graph.param_shapes(), **graph.buffer_shapes()}
        if all(tuple(value.shape) == tuple(wanted[key]) for key, value in saved.weights_for(graph).items()
               if key in wanted and key.rsplit(".", 1)[0] not in layers):
            raise
        return None


def _source(saved: ckpt_io.Checkpoint, model_spec: spec.ModelSpec, dataset: str | None, data_dir: Path | None,
            data: str, progress) -> Source:
    recorded = saved.meta.get("source")
    if data == RECORDED and dataset is None and isinstance(recorded, dict):
        return Source.from_config(recorded)  # classes and statistics as trained, the data not needed
    name, data_dir = saved.data_for(model_spec, dataset, data_dir)
    _note_other_dataset(saved, name)
    if data == RECORDED and name == FOLDER and data_dir is None:
        if not saved.config:  # weights alone: no run recorded anything of its data
            raise UsageError(f"{saved.path} records no classes or image statistics (weights alone, such as a "
                             "PyTorch state dict): give the image folder it was trained on, --data-dir DIR")
        raise UsageError(f"{saved.path} does not record its image folder's classes and statistics: use a "
                         "checkpoint written by this version of train")
    return open_source(name, data_dir, model_spec.input, progress=progress, classes=class_list_of(saved),
                       statistics_only=data == RECORDED)


def _note_other_dataset(saved: ckpt_io.Checkpoint, name: str) -> None:
    """Weights scored or drawn on another dataset than they were trained on run (the class counts may even
    agree: MNIST's weights on Fashion-MNIST), but every number is then of that mismatch: say so once."""
    trained_on = saved.config.get("dataset")
    if isinstance(trained_on, str) and trained_on != name and class_list_of(saved) is None:
        warnings.warn(f"{saved.path} was trained on {trained_on}, not {name}: its classes are {trained_on}'s",
                      ckpt_io.CheckpointWarning, stacklevel=3)


def class_list_of(saved: ckpt_io.Checkpoint) -> Source | None:
    """The classes and preparation of published weights (``imagenet``) as the checkpoint records them; None
    for a checkpoint of any other source."""
    record = saved.meta.get("source")
    if isinstance(record, dict) and class_lists.is_class_list(record.get("name")):
        return Source.from_config(record)
    return None


def network(model_spec: spec.ModelSpec, graph: Graph, saved: ckpt_io.Checkpoint, fast: bool = True,
            dtype: str | None = None) -> Network:
    """A network of ``graph`` holding a checkpoint's weights.

    The dtype is the one the checkpoint was trained in unless ``dtype`` says; weights of auxiliary heads
    that ``graph`` leaves out are skipped, anything else that does not fit is a CheckpointError naming it.
    ``fast=False`` keeps every layer's output (:class:`~cnncli.engine.network.Network`).
    """
    if dtype is None:
        trained = saved.config.get("dtype")
        dtype = trained if trained in ("float32", "float64") else "float32"
    net = Network(graph, dtype, fast=fast, init=False)  # every parameter is loaded next
    wanted = {**net.params, **net.buffers}
    net.load_state_dict({k: v for k, v in saved.weights_for(graph).items()
                         if k in wanted or not _is_aux_key(k, model_spec, graph)}, source=str(saved.path))
    return net


def _is_aux_key(key: str, model_spec: spec.ModelSpec, graph: Graph) -> bool:
    node = key.rsplit(".", 1)[0]
    return any(n.name == node for n in model_spec.nodes) and node not in {n.name for n in graph.nodes}
