"""A model's nodes wired by name, with every shape inferred: the network before any array exists.

:func:`build` walks the nodes in file order (which is a topological order:
a layer may only read layers above it), calls each kind's pure shape function
and records output shapes, parameter and buffer shapes and MACs. A shape that
does not fit becomes a :class:`~cnncli.errors.ShapeError` naming the layer,
its inputs and their shapes. ``summarize`` stops here; the engine allocates
from it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from cnncli.errors import ShapeError, SpecError
from cnncli.model.kinds import KINDS, Shape, ShapeProblem, conv_connections, fmt_shape
from cnncli.model.spec import ModelSpec, NodeSpec


@dataclass
class Node:
    """A node of the graph: its spec plus everything inferred from shapes."""

    spec: NodeSpec
    in_shapes: list[Shape]
    out_shape: Shape
    params: dict[str, Shape] = field(default_factory=dict)   # suffix -> shape
    buffers: dict[str, Shape] = field(default_factory=dict)
    macs: int = 0
    #: Frozen for a run (``train --freeze``, :mod:`cnncli.records.freeze`): its parameters do not learn and a batch
    #: norm normalises with its running statistics, which do not change either.
    frozen: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def options(self) -> dict[str, Any]:
        return self.spec.options

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.spec.inputs

    @property
    def trainable(self) -> bool:
        return not self.frozen and bool(self.spec.options.get("trainable", True))

    @property
    def n_params(self) -> int:
        """Learnable numbers; a sparse connection table counts only the kernels it keeps."""
        kept = conv_connections(self.options)
        total = 0
        for suffix, shape in self.params.items():
            if suffix == "weight" and kept is not None:
                total += kept * shape[2] * shape[3]
            else:
                total += math.prod(shape)
        return total


@dataclass
class Graph:
    """The inferred network: nodes in execution order, its input, main and auxiliary outputs."""

    spec: ModelSpec
    input_shape: Shape
    nodes: list[Node]
    output: str
    aux_outputs: dict[str, float]

    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    def __post_init__(self) -> None:
        self._by_name = {n.name: n for n in self.nodes}

    @property
    def output_shape(self) -> Shape:
        return self[self.output].out_shape

    def param_shapes(self) -> dict[str, Shape]:
        """``{'<node>.weight': shape, ...}`` in execution order: the checkpoint's keys."""
        return {f"{n.name}.{k}": s for n in self.nodes for k, s in n.params.items()}

    def buffer_shapes(self) -> dict[str, Shape]:
        return {f"{n.name}.{k}": s for n in self.nodes for k, s in n.buffers.items()}

    @property
    def total_params(self) -> int:
        return sum(n.n_params for n in self.nodes)

    @property
    def trainable_params(self) -> int:
        return sum(n.n_params for n in self.nodes if n.trainable)

    @property
    def macs(self) -> int:
        return sum(n.macs for n in self.nodes)


def _describe(graph_nodes: dict[str, Node], name: str, input_shape: Shape) -> str:
    if name == "input":
        return f"the input ({fmt_shape(input_shape)})"
    n = graph_nodes[name]
    return f"{n.spec.where} ({fmt_shape(n.out_shape)})"


def build(spec: ModelSpec, input_shape: Shape | None = None, aux: bool = True,
          frozen: Collection[str] = ()) -> Graph:
    """Infer every shape of ``spec``; ``input_shape`` overrides the file's input size.

    With ``aux=False`` the nodes that only feed auxiliary outputs are left out
    (what runs at inference). The nodes named in ``frozen`` are frozen (:attr:`Node.frozen`).
    """
    shape_in = tuple(input_shape) if input_shape is not None else spec.input
    keep = _needed(spec, aux)
    nodes: dict[str, Node] = {}
    shapes: dict[str, Shape] = {"input": shape_in}
    for ns in spec.nodes:
        if ns.name not in keep:
            continue
        in_shapes = [shapes[i] for i in ns.inputs]
        kind = KINDS[ns.kind]
        try:
            out = kind.shape(ns.options, in_shapes)
            if any(d < 1 for d in out):
                raise ShapeProblem(f"its output would be {fmt_shape(out)}: the input is too small")
        except ShapeProblem as e:
            sources = "; ".join(f"input from {_describe(nodes, i, shape_in)}" for i in ns.inputs)
            hint = "" if input_shape is None else f" (network input {fmt_shape(shape_in)})"
            raise ShapeError(f"{spec.source}: {ns.where}: {e}{hint}; {sources}") from None
        node = Node(ns, in_shapes, out, kind.params(ns.options, in_shapes),
                    kind.buffers(ns.options, in_shapes), kind.macs(ns.options, in_shapes, out), ns.name in frozen)
        _check_init(spec, node)
        nodes[ns.name] = node
        shapes[ns.name] = out
    _check_classes(spec, nodes[spec.output])
    aux_outputs = {n.name: n.spec.aux for n in nodes.values() if n.spec.aux is not None} if aux else {}
    return Graph(spec, shape_in, list(nodes.values()), spec.output, aux_outputs)


def _check_classes(spec: ModelSpec, output: Node) -> None:
    """A model file's ``classes:`` must be what its network outputs: the count alone sizes nothing, and a
    file that says 3 while its last layer gives 10 would train and score 10 classes without a word."""
    scored = output_classes(output)
    if spec.classes is None or scored == spec.classes:
        return
    units = f" (its last layer {output.name} has units: {output.spec.options['units']})" if (
        "units" in output.spec.options) else ""
    if output.kind == "yolo":
        units = (f" (scores for {scored} classes: {output.out_shape[0]} channels, 5 a box for "
                 f"{output.options['boxes']} boxes, then one a class)")
    raise ShapeError(f"{spec.source}: classes: {spec.classes}, but the network outputs "
                     f"{fmt_shape(output.out_shape)}{units}: make the two agree")


def output_classes(node: Node) -> int | None:
    """The classes the output ``node`` scores (:attr:`cnncli.model.kinds.Kind.classes`), None when it scores none."""
    return KINDS[node.kind].classes(node.options, node.out_shape)


def _needed(spec: ModelSpec, aux: bool) -> set[str]:
    """Names of the nodes that the outputs depend on (all outputs, or the main one only)."""
    targets = [spec.output] + ([n.name for n in spec.nodes if n.aux is not None] if aux else [])
    return ancestors({n.name: n.inputs for n in spec.nodes}, targets)


def ancestors(inputs_of: dict[str, tuple[str, ...]], names: list[str]) -> set[str]:
    """``names`` and every node they read from, directly or not (the input excluded)."""
    keep: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in keep or name == "input":
            continue
        keep.add(name)
        stack.extend(inputs_of[name])
    return keep


#: The names a layer's ``init`` may use (implemented by cnncli.engine.init.SCHEMES).
INIT_SCHEMES = ("default", "he", "xavier", "zeros")


def _check_init(spec: ModelSpec, node: Node) -> None:
    """Inline initial values must match the parameter shapes exactly."""
    init = node.spec.init
    if init is None:
        return
    where = f"{spec.source}: {node.spec.where}: init"
    if isinstance(init, str):
        if init not in INIT_SCHEMES:
            raise SpecError(f"{where} must be one of {', '.join(INIT_SCHEMES)} or a mapping, got {init!r}")
        return
    for key, value in init.items():
        if key not in node.params:
            raise SpecError(f"{where}: '{key}' is not a parameter of this layer "
                            f"(it has {', '.join(node.params) or 'none'})")
        if isinstance(value, str):
            if value not in INIT_SCHEMES:
                raise SpecError(f"{where}.{key} must be one of {', '.join(INIT_SCHEMES)} or numbers, got {value!r}")
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            continue  # a constant fills the whole array
        got = _nested_shape(value)
        if got is None:
            raise SpecError(f"{where}.{key} must be a number, a nested list of numbers or a scheme name")
        if got != node.params[key]:
            raise SpecError(f"{where}.{key} has shape {fmt_shape(got)} but the layer needs "
                            f"{fmt_shape(node.params[key])}")


def _nested_shape(value: Any) -> Shape | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return ()
    if not isinstance(value, list) or not value:
        return None
    inner = [_nested_shape(v) for v in value]
    if any(s is None or s != inner[0] for s in inner):
        return None
    return (len(value),) + inner[0]  # type: ignore[operator]
