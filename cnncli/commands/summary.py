"""``cnncli summarize`` and ``cnncli models``: a network's layers, shapes, parameters and MACs.

Pure shape inference on top of :mod:`cnncli.model.graph`: no weight array is
allocated and nothing here imports Numba, the layers or the kernels, so
``cnncli summarize vgg16`` answers at once; only ``--paths`` (which strategy
each convolution takes on this machine) asks the engine's picker. The functions return records;
:mod:`cnncli.render.summary` draws them.

Counting rules (those of torchvision and torchinfo):

* **Parameters** are learnable weights and biases, batch-norm scale and shift
  included; batch-norm running statistics are buffers, counted apart. A sparse
  connection table (LeNet-5's C3) counts only the kernels it keeps. Layers
  with ``trainable: false`` are reported as non-trainable.
* **MACs** are the multiply-accumulates of convolution and dense layers for
  one sample, what torchvision's "GFLOPS" column counts.
* **Memory** is float32: parameters × 4 bytes, and for the forward and
  backward pass every node's output kept once for the backward pass plus its
  gradient, × 4 bytes × batch. MB are 10⁶ bytes, as torchinfo prints them.

Blocks fold by name: a node named ``layer1.0.conv1`` lies in the groups
``layer1`` and ``layer1.0`` — the block instances of :attr:`NodeSpec.scope`
(a ``repeat`` instance ``layer1.0`` gets the parent ``layer1``) plus dotted
sub-groups such as GoogLeNet's ``inception3a.branch2``, as torchvision names
its modules. ``rows(depth)`` keeps ``depth`` levels of groups and folds
everything deeper into one row per group.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cnncli.errors import ShapeError, UsageError
from cnncli.model import graph as graph_mod
from cnncli.model import spec as spec_mod
from cnncli.model.kinds import Shape, conv_connections, fmt_shape

BYTES_PER_NUMBER = 4  # float32


@dataclass(frozen=True)
class Row:
    """One row of the summary: a layer, or a block folded into one row.

    ``type`` is the layer kind (``conv``) or, for a folded block, the block's
    name (``basic``; ``basic ×2`` for a group of block instances). ``detail``
    is a short human description for tables (``3×3/2``), not part of JSON.
    """

    name: str
    type: str
    output_shape: Shape
    params: int
    macs: int
    level: int = 0                     # how many groups enclose it
    groups: tuple[str, ...] = ()       # the enclosing groups, outermost first
    detail: str = ""
    trainable: bool = True             # false: its parameters are fixed
    aux: bool = False                  # only feeds an auxiliary (training) head
    folded: int = 1                    # how many nodes the row stands for


@dataclass(frozen=True)
class ConvPath:
    """The convolution strategies (cnncli.engine.conv.STRATEGIES) one conv layer takes: forward, backward, and the
    nodes of the fused chain it heads (empty: it runs on its own)."""

    forward: str
    backward: str
    chain: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"forward": self.forward, "backward": self.backward, "fused_with": list(self.chain)}


@dataclass(frozen=True)
class Paths:
    """Which strategy each conv layer takes in a fast network (train, eval, predict) on this machine, in float32,
    for the summary's batch, split into ``parts`` (their sizes) over ``cores`` cores. What pays depends on
    the CPU's vector registers and float32 lanes and on whether numpy's BLAS exports a CBLAS GEMM (``cblas``)."""

    layers: dict[str, ConvPath]
    parts: tuple[int, ...]
    cores: int
    vector_registers: int
    lanes: int
    cblas: bool
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "parts": list(self.parts), "cores": self.cores,
                "vector_registers": self.vector_registers, "float32_lanes": self.lanes, "cblas": self.cblas}


@dataclass(frozen=True)
class Summary:
    """Everything ``summarize`` reports about one model at one input size."""

    model: str
    description: str
    reference: str
    source: str
    input: Shape
    model_input: Shape                 # the input size the file declares
    output_shape: Shape
    layers: tuple[Row, ...]            # one row per node, in execution order
    total_params: int
    trainable_params: int
    macs: int
    buffers: int                       # batch-norm running statistics (not parameters)
    batch: int
    aux: bool                          # auxiliary heads included
    aux_outputs: dict[str, float] = field(default_factory=dict)
    aux_params: int = 0                # parameters only the auxiliary heads use
    aux_macs: int = 0
    activations: int = 0               # Σ of every node's output size, one sample
    block_types: dict[str, str] = field(default_factory=dict)  # block instance -> block name
    paths: Paths | None = None         # --paths: each conv layer's strategy on this machine

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def param_bytes(self) -> int:
        return self.total_params * BYTES_PER_NUMBER

    @property
    def input_bytes(self) -> int:
        return math.prod(self.input) * BYTES_PER_NUMBER * self.batch

    @property
    def activation_bytes(self) -> int:
        """Forward + backward: each node's output kept for backward, plus its gradient."""
        return 2 * self.activations * BYTES_PER_NUMBER * self.batch

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.activation_bytes + self.param_bytes

    # -- folding --------------------------------------------------------------------

    def rows(self, depth: int | None = None) -> list[Row]:
        """The rows with blocks nested deeper than ``depth`` folded; ``None`` keeps every layer."""
        if depth is None:
            return list(self.layers)
        if depth < 0:
            raise UsageError(f"--depth must be at least 0, got {depth}")
        out: list[Row] = []
        seen: set[str] = set()
        for row in self.layers:
            if len(row.groups) <= depth:
                out.append(row)
            elif row.groups[depth] not in seen:
                seen.add(row.groups[depth])
                out.append(self._folded[row.groups[depth]])
        return out

    def group_row(self, group: str) -> Row:
        """A group folded into one row (what ``rows`` shows for it at its own level)."""
        return self._folded[group]

    @cached_property
    def _folded(self) -> dict[str, Row]:
        """Every group as one row: summed params and MACs, the output shape of its last node."""
        acc: dict[str, dict] = {}
        children: dict[str, list[str]] = {}
        for row in self.layers:
            for level, group in enumerate(row.groups):
                a = acc.setdefault(group, {"params": 0, "macs": 0, "folded": 0, "trainable": True,
                                           "aux": True, "level": level, "groups": row.groups[:level]})
                a["params"] += row.params
                a["macs"] += row.macs
                a["folded"] += 1
                a["output_shape"] = row.output_shape
                a["trainable"] = a["trainable"] and (row.trainable or row.params == 0)
                a["aux"] = a["aux"] and row.aux
                child = row.groups[level + 1] if level + 1 < len(row.groups) else row.name
                kids = children.setdefault(group, [])
                if child not in kids:
                    kids.append(child)
        kinds = {row.name: row.type for row in self.layers}

        def kind(name: str) -> str:
            if name not in kinds:
                kinds[name] = self.block_types.get(name) or _runs([kind(c) for c in children[name]])
            return kinds[name]

        return {g: Row(name=g, type=kind(g), output_shape=a["output_shape"], params=a["params"],
                       macs=a["macs"], level=a["level"], groups=a["groups"], trainable=a["trainable"],
                       aux=a["aux"], folded=a["folded"])
                for g, a in acc.items()}

    # -- records for scripts ------------------------------------------------------------

    def to_dict(self, depth: int | None = None) -> dict[str, Any]:
        """The JSON contract: model, input, parameter counts, MACs and one entry per row."""
        return {
            "model": self.model,
            "input": list(self.input),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "macs": self.macs,
            "layers": [
                {"name": r.name, "type": r.type, "output_shape": list(r.output_shape),
                 "params": r.params, "macs": r.macs, **self._strategy(r.name)}
                for r in self.rows(depth)
            ],
            # Beyond the contract: what the table's footer says.
            "output_shape": list(self.output_shape),
            "batch": self.batch,
            "param_bytes": self.param_bytes,
            "activation_bytes": self.activation_bytes,
            "aux_outputs": dict(self.aux_outputs),
            **({"paths": self.paths.to_dict()} if self.paths is not None else {}),
        }

    def _strategy(self, name: str) -> dict[str, Any]:
        """A conv layer's strategies, under --paths: {"strategy": {...}}; else nothing."""
        path = self.paths.layers.get(name) if self.paths is not None else None
        return {"strategy": path.to_dict()} if path is not None else {}


@dataclass(frozen=True)
class ModelInfo:
    """One line of ``cnncli models``."""

    name: str
    description: str
    input: Shape
    params: int
    trainable_params: int
    macs: int
    reference: str = ""
    weights: tuple[str, ...] = ()   # the published weights its file names (--weights imagenet)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input": list(self.input),
                "params": self.params, "trainable_params": self.trainable_params,
                "macs": self.macs, "reference": self.reference, "weights": list(self.weights)}


# --- building ----------------------------------------------------------------------------

def summarize(model: str, input_size: str | None = None, batch: int = 1, aux: bool = True,
              paths: bool = False) -> Summary:
    """Summarize a built-in model or a YAML file, optionally at another input size.

    ``input_size`` (``"3x64x64"``) may change the height and width; a size the
    network cannot take raises :class:`ShapeError` naming the layer where it
    breaks — including a layer whose weights would have to change shape (a
    dense layer after ``flatten`` without adaptive pooling, or a different
    number of input channels). ``paths``: also which convolution strategy each conv layer takes on this
    machine (:func:`conv_paths`; this imports the engine).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {batch!r}")
    spec = spec_mod.load(model)
    shape = None
    if input_size is not None:
        shape = spec_mod.parse_input_shape(input_size, lambda msg: UsageError(f"--input {msg}"))
    g = graph_mod.build(spec, shape, aux=aux)
    if shape is not None and shape != spec.input:
        _check_weights_fit(spec, g, aux)
    result = _summary(spec, g, batch, aux)
    return dataclasses.replace(result, paths=conv_paths(g, batch)) if paths else result


def conv_paths(g: graph_mod.Graph, batch: int) -> Paths:
    """Which strategy :func:`cnncli.engine.conv.pick` gives each conv layer of ``g`` in a fast network, float32,
    on a batch of ``batch`` split as this machine's cores split it: the engine's own rules and chains, asked
    about shapes (no weight is allocated, nothing runs)."""
    from cnncli.engine import blas, conv, rules, simd
    from cnncli.engine.network import fused_chains
    from cnncli.engine.parts import usable_cores

    itemsize = 4
    cores = usable_cores()
    k = rules.part_count(batch, cores)
    parts = tuple(batch * (i + 1) // k - batch * i // k for i in range(k))
    chains = fused_chains(g)
    layers: dict[str, ConvPath] = {}
    for node in g.nodes:
        if node.kind != "conv":
            continue
        o = node.options
        act, pool = chains.get(node.name, (None, None))
        chain = None if act is None else (act.kind, pool.options["kernel"][0] if pool is not None else 0)
        forward: list[str] = []
        backward: list[str] = []
        for n in sorted(set(parts), reverse=True):  # parts of unequal sizes may differ
            call = conv.Call((n, *node.in_shapes[0]), node.params["weight"], o["stride"], o["padding"],
                             o["dilation"], o["groups"], itemsize, chain=chain)
            picked = conv.pick(call).name
            forward.append(picked)
            backward.append(picked if chain is not None else conv.pick(call, conv.BACKWARD).name)
        fused = () if act is None else tuple(x.name for x in (act, pool) if x is not None)
        layers[node.name] = ConvPath(" | ".join(dict.fromkeys(forward)), " | ".join(dict.fromkeys(backward)), fused)
    return Paths(layers=layers, parts=parts, cores=cores, vector_registers=simd.VECTOR_REGISTERS,
                 lanes=simd.lanes(itemsize), cblas=blas.FUNCTIONS is not None)


def _check_weights_fit(spec: spec_mod.ModelSpec, g: graph_mod.Graph, aux: bool) -> None:
    """A model's weights are made for its declared input: another size must not change them."""
    ref = graph_mod.build(spec, None, aux=aux)
    for node in g.nodes:
        want = ref[node.name]
        if node.params != want.params:
            got_in = " + ".join(fmt_shape(s) for s in node.in_shapes)
            want_in = " + ".join(fmt_shape(s) for s in want.in_shapes)
            raise ShapeError(
                f"{spec.source}: {node.spec.where}: at input {fmt_shape(g.input_shape)} this layer receives "
                f"{got_in}, but its weights are made for {want_in} (the model's input is "
                f"{fmt_shape(spec.input)}); the network cannot take {fmt_shape(g.input_shape)}"
            )


def _runs(kinds: list[str]) -> str:
    """``['basic_down', 'basic', 'basic']`` → ``'basic_down, basic ×2'``."""
    runs: list[list] = []
    for k in kinds:
        if runs and runs[-1][0] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    return ", ".join(k if n == 1 else f"{k} ×{n}" for k, n in runs)


def _groups(name: str, node_names: set[str]) -> tuple[str, ...]:
    """``layer1.0.conv1`` → ``('layer1', 'layer1.0')``: the dotted prefixes that are not nodes."""
    parts = name.split(".")
    return tuple(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p not in node_names)


def _detail(kind: str, o: dict) -> str:
    def pair(p: tuple[int, int]) -> str:
        return f"{p[0]}×{p[1]}"

    def stride(s: tuple[int, int]) -> str:
        if s == (1, 1):
            return ""
        return f"/{s[0]}" if s[0] == s[1] else f"/{pair(s)}"

    if kind == "conv":
        text = pair(o["kernel"]) + stride(o["stride"])
        if o.get("groups", 1) > 1:
            text += f", groups {o['groups']}"
        kept = conv_connections(o)
        if kept is not None:
            total = sum(len(r) for r in o["connections"])
            text += f", sparse {kept}/{total}"
        if o.get("dilation", (1, 1)) != (1, 1):
            text += f", dilation {pair(o['dilation'])}"
        return text
    if kind in ("maxpool", "avgpool", "subsample"):
        return pair(o["kernel"]) + stride(o["stride"])
    if kind == "adaptive_avgpool":
        return f"→ {pair(o['output'])}"
    if kind == "dropout":
        return f"{o['rate']:g}"
    if kind == "leaky_relu":
        return f"{o['slope']:g}"
    if kind == "lrn":
        return f"size {o['size']}"
    if kind == "yolo":
        return f"{o['boxes']} boxes" + (", anchors" if o["anchors"] else "")
    if kind == "localize":
        return "class + box"
    return ""


def _summary(spec: spec_mod.ModelSpec, g: graph_mod.Graph, batch: int, aux: bool) -> Summary:
    main = graph_mod.ancestors({n.name: n.inputs for n in g.nodes}, [g.output])
    names = {n.name for n in g.nodes}
    block_types: dict[str, str] = {}
    rows = []
    for n in g.nodes:
        for inst, block in n.spec.blocks:
            block_types.setdefault(inst, block)
        groups = _groups(n.name, names)
        detail = _detail(n.kind, n.options)
        if n.spec.aux is not None:
            detail = (detail + ", " if detail else "") + f"aux ×{n.spec.aux:g}"
        rows.append(Row(name=n.name, type=n.kind, output_shape=n.out_shape, params=n.n_params,
                        macs=n.macs, level=len(groups), groups=groups, detail=detail,
                        trainable=n.trainable, aux=n.name not in main))
    return Summary(
        model=spec.name, description=spec.description, reference=spec.reference, source=spec.source,
        input=g.input_shape, model_input=spec.input, output_shape=g.output_shape, layers=tuple(rows),
        total_params=g.total_params, trainable_params=g.trainable_params, macs=g.macs,
        buffers=sum(math.prod(s) for s in g.buffer_shapes().values()),
        batch=batch, aux=aux, aux_outputs=dict(g.aux_outputs),
        aux_params=sum(r.params for r in rows if r.aux),
        aux_macs=sum(r.macs for r in rows if r.aux),
        activations=sum(math.prod(n.out_shape) for n in g.nodes),
        block_types=block_types,
    )


def builtin_models() -> list[ModelInfo]:
    """Every model file in ``models/``: name, one-line description, input size, parameters, MACs."""
    infos = []
    for name in spec_mod.builtin_names():
        spec = spec_mod.load(name)
        g = graph_mod.build(spec)
        infos.append(ModelInfo(name=name, description=spec.description, input=spec.input,
                               params=g.total_params, trainable_params=g.trainable_params,
                               macs=g.macs, reference=spec.reference, weights=tuple(spec.weights)))
    return infos
