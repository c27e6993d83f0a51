"""Model files: YAML text → a validated, block-expanded :class:`ModelSpec`.

The format (see ``models/README.md``) is a list of layers read top to bottom;
each entry is a layer kind with keyword options (``- conv: {filters: 6,
kernel: 5}``) or a bare kind (``- relu``). Named nodes and ``input:``/
``inputs:`` wire residual adds and inception concats; ``blocks:`` define
reusable, parameterised groups of layers used like a kind, with ``repeat``.

Everything is checked here, before any array exists: unknown kinds and options
(with the closest valid name), option types and ranges, references to nodes,
block arguments. Shapes are checked next, in :mod:`cnncli.model.graph`.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnncli.dataset_names import CHOICES, CLASS_LISTS
from cnncli.errors import SpecError, UnknownModel
from cnncli.model.kinds import COMMON_OPTIONS, KINDS, Option, Shape, is_parametric

#: The names a model file's ``loss:`` and ``train:`` section (and the command line's flags) choose from: the one list
#: of each. The engine's registries (``engine.losses.LOSSES``, ``engine.optim.OPTIMIZERS``,
#: ``records.schedule.SCHEDULES``) implement exactly these names (tests/test_layout.py holds them equal); the lists
#: live here because this module must not load the engine.
LOSSES = ("cross_entropy", "bce", "mse", "yolo", "localize")
LOSS_ALIASES = {"ce": "cross_entropy"}  # the command line's short spellings
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine", "onecycle")

# The `train:` section: option -> (type, check). Values are defaults the CLI may override.
TRAIN_OPTIONS: dict[str, Option] = {
    "dataset": Option("choice", "mnist", choices=CHOICES),
    "optimizer": Option("choice", "sgd", choices=OPTIMIZERS),
    "lr": Option("float", 0.01, check=lambda v: None if v > 0 else "must be positive"),
    "momentum": Option("float", 0.0, check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
    "nesterov": Option("bool", False),
    "weight_decay": Option("float", 0.0, check=lambda v: None if v >= 0 else "must not be negative"),
    "schedule": Option("choice", "constant", choices=SCHEDULES),
    "warmup_epochs": Option("float", 0.0, check=lambda v: None if v >= 0 else "must not be negative"),
    "step_epochs": Option("int", 10, check=lambda v: None if v > 0 else "must be positive"),
    "step_gamma": Option("float", 0.1, check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
    "batch_size": Option("int", 64, check=lambda v: None if v > 0 else "must be positive"),
    "epochs": Option("int", 10, check=lambda v: None if v >= 1 else "must be at least 1"),
    "val_size": Option("int", 5000, check=lambda v: None if v >= 0 else "must not be negative"),
    "seed": Option("int", 0),
    # Augmentation of training batches (cnncli.records.inputs): the CIFAR recipe is crop_padding 4 and flip.
    "crop_padding": Option("int", 0, "random crop after a zero border of this many pixels",
                           check=lambda v: None if v >= 0 else "must not be negative"),
    "flip": Option("bool", False, "flip half the training images horizontally"),
}

#: The key inside ``train:`` whose entries override its settings for one dataset.
_PER_DATASET = "datasets"

_TOP_KEYS = ("name", "description", "reference", "input", "classes", "loss", "train",
             "blocks", "layers", "output", "weights")
#: The keys of one entry of ``weights:`` (:class:`PublishedWeights`).
_WEIGHTS_KEYS = ("url", "classes", "mean", "std", "resize", "names")
_BLOCK_USE_OPTIONS = ("name", "input", "repeat")
_MAX_BLOCK_DEPTH = 16

# Bounds on the document itself, so that a runaway or hostile file is a SpecError rather than a
# RecursionError (yaml and every walk of the document recurse per level) or an exhausted memory.
MAX_FILE_BYTES = 10_000_000     # a model file's text; the largest built-in one is a few kB
MAX_NESTING = 100               # lists and mappings inside one another; the built-in files need at most 7
MAX_ITEMS = 10_000_000          # values in the document with aliases expanded (no file needs aliases)


@dataclass(frozen=True)
class NodeSpec:
    """One layer of the expanded network.

    ``where`` says where it came from in the file, for error messages
    (``layers[3] (conv 'conv2')``); ``scope`` lists the enclosing block
    instances (``('layer1', 'layer1.0')``) so ``summarize --depth`` can fold them.
    ``blocks`` pairs each enclosing block instance with the name of its block,
    outermost first (``(('layer1.0', 'basic'),)``); a ``repeat`` group such as
    ``layer1`` is in ``scope`` but not here, as it is no one block.
    """

    name: str
    kind: str
    options: dict[str, Any]
    inputs: tuple[str, ...]
    where: str
    scope: tuple[str, ...] = ()
    blocks: tuple[tuple[str, str], ...] = ()
    aux: float | None = None
    init: Any = None


@dataclass(frozen=True)
class PublishedWeights:
    """One entry of a model file's ``weights:`` section: published weights that fit the network, and how
    images must be prepared for them (``cnncli --weights NAME``; :mod:`cnncli.records.published`).

    ``url``'s file name ends in ``-<hash>.<ext>``, ``hash`` being the start of the file's SHA-256 (as
    torchvision names its files). ``classes`` is a class list (:mod:`cnncli.data.class_lists`). An image is
    resized so that its shorter side is ``resize`` (None: so that it just covers the input), centre-cropped
    to the input's H×W and normalised with ``mean`` and ``std`` (per channel, pixels in [0, 1]). ``names``
    maps the file's layer names to the model's where they differ (``features.0`` -> ``conv1``).
    """

    name: str
    url: str
    classes: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    names: dict[str, str] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str:
        """The start of the file's SHA-256 its name carries (``resnet18-f37072fd.pth`` -> ``f37072fd``)."""
        return self.filename.rsplit("-", 1)[-1].split(".", 1)[0]


@dataclass
class ModelSpec:
    """A validated model file with its blocks expanded into nodes."""

    name: str
    source: str
    input: Shape
    nodes: list[NodeSpec]
    output: str
    description: str = ""
    reference: str = ""
    classes: int | None = None
    loss: str = "cross_entropy"
    train: dict[str, Any] = field(default_factory=dict)
    #: ``train: datasets:``: for a dataset, the settings that replace ``train``'s when training on it.
    train_by_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``weights:``: published weights that fit the network, by the name ``--weights`` gives.
    weights: dict[str, PublishedWeights] = field(default_factory=dict)

    def train_setting(self, key: str) -> Any:
        """A ``train:`` setting: the file's value, else its default in :data:`TRAIN_OPTIONS`."""
        return self.train.get(key, TRAIN_OPTIONS[key].default)

    def train_settings(self, dataset: str | None = None) -> dict[str, Any]:
        """Every ``train:`` setting for ``dataset`` (the file's own when None).

        Defaults < the file's ``train:`` < its ``train: datasets: <dataset>:`` entry.
        """
        settings = {k: opt.default for k, opt in TRAIN_OPTIONS.items()}
        settings.update(self.train)
        if dataset is not None:
            settings["dataset"] = dataset
        settings.update(self.train_by_dataset.get(settings["dataset"], {}))
        return settings

    def fingerprint(self) -> str:
        """A digest of the network the file describes: its input shape, each layer's name, kind, inputs and
        options, whether it is an auxiliary head, and the output. Not its name, description, loss, training
        recipe or initialisation, so a copy of a model file under another name has the same fingerprint, and
        two networks with the same parameters wired differently (``plain20``, ``resnet20``) have not.

        Options at their kind's default are left out: a later version that gives a kind a new option (with a
        default that keeps what the kind did) still finds the same fingerprint for the same file.
        """
        layers = []
        for n in self.nodes:
            defaults = KINDS[n.kind].options
            options = {k: v for k, v in n.options.items()
                       if k not in defaults or defaults[k].required or v != coerce(defaults[k].default, defaults[k])}
            layers.append([n.name, n.kind, list(n.inputs), options, n.aux is not None])
        record = {"input": list(self.input), "layers": layers, "output": self.output}
        text = json.dumps(record, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


# --- locating files --------------------------------------------------------------

def builtin_dir() -> Path:
    """The folder of built-in model files: package data when installed, ``models/`` in a source tree."""
    # models/ holds no Python, so it installs as a namespace package: ask the import system where it is.
    found = importlib.util.find_spec("cnncli.models")
    for location in (found.submodule_search_locations or []) if found else []:
        if Path(location).is_dir():
            return Path(location)
    # Running from a source checkout that was not installed: models/ sits beside cnncli/.
    return Path(__file__).resolve().parents[2] / "models"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A built-in model name or a path to a YAML file → the file's path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise SpecError(f"model file '{name_or_path}' does not exist")
        return path
    candidate = builtin_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    if path.is_file():
        return path
    names = builtin_names()
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" — did you mean '{close[0]}'?" if close else ""
    raise UnknownModel(
        f"unknown model '{name_or_path}'{hint}\n"
        f"built-in models: {', '.join(names)}; or give the path of a .yaml file"
    )


def load(name_or_path: str) -> ModelSpec:
    """Read and validate a model file (a built-in name or a path)."""
    path = resolve(name_or_path)
    label = f"models/{path.name}" if path.parent == builtin_dir() else str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _too_large(label, size)  # before reading it all into memory
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read: {e}") from None
    return parse(text, label, default_name=path.stem)


# --- parsing -----------------------------------------------------------------------

def _too_large(source: str, size: int) -> SpecError:
    return SpecError(f"{source}: the file is {size:,} bytes; a model file may be at most "
                     f"{MAX_FILE_BYTES // 1_000_000} MB ({MAX_FILE_BYTES:,} bytes)")


def _too_deep(source: str, at: str = "") -> SpecError:
    return SpecError(f"{source}: lists and mappings nest deeper than {MAX_NESTING} levels{at}; "
                     "a model file needs fewer than ten")


class _TooDeep(Exception):
    """Raised by :class:`_Loader` at the node that nests too deep (``mark`` locates it)."""

    def __init__(self, mark: Any):
        super().__init__()
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """yaml's safe loader, refusing to nest lists and mappings deeper than :data:`MAX_NESTING`.

    yaml composes nested nodes recursively, so a file of 5,000 nested brackets would end in a
    RecursionError; this stops at the first node beyond the limit instead.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._nesting = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        if self._nesting >= MAX_NESTING:
            raise _TooDeep(self.peek_event().start_mark)
        self._nesting += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._nesting -= 1


def _load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` within the bounds on nesting; errors other than YAML's become SpecErrors."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except _TooDeep as e:
        raise _too_deep(source, f" (at line {e.mark.line + 1}, column {e.mark.column + 1})") from None
    except RecursionError:
        raise _too_deep(source) from None
    finally:
        loader.dispose()


def _check_document(doc: Any, source: str) -> None:
    """Nesting and size of the loaded document with aliases followed.

    An alias can repeat a node deeper than it was written, refer to a node that contains it
    (a cycle) or multiply a document exponentially; each node is measured once.
    """
    measured: dict[int, tuple[int, int]] = {}   # id -> (levels below it, values in it)
    open_nodes: set[int] = set()

    def measure(value: Any, level: int) -> tuple[int, int]:
        if not isinstance(value, (list, dict)):
            return 0, 1
        key = id(value)
        if key in open_nodes:
            raise SpecError(f"{source}: an alias (*name) refers to a list or mapping that contains it")
        if key not in measured:
            if level > MAX_NESTING:
                raise _too_deep(source)
            open_nodes.add(key)
            below, items = 0, 1
            for child in (value.values() if isinstance(value, dict) else value):
                child_below, child_items = measure(child, level + 1)
                below = max(below, child_below + (1 if isinstance(child, (list, dict)) else 0))
                items += child_items
                if items > MAX_ITEMS:
                    raise SpecError(f"{source}: its aliases expand to more than {MAX_ITEMS:,} values")
            open_nodes.discard(key)
            measured[key] = (below, items)
        below, items = measured[key]
        if level + below > MAX_NESTING:
            raise _too_deep(source)
        return below, items

    measure(doc, 1)


def parse(text: str, source: str = "<model>", default_name: str = "model") -> ModelSpec:
    """Parse the text of a model file. ``source`` names it in error messages."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        raise _too_large(source, size)
    try:
        doc = _load_yaml(text, source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        # The parser often notices a mistake only later (an unclosed bracket at the end of the
        # file); its context names where the construct it was reading began.
        context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and cmark and (not mark or cmark.line != mark.line):
            problem += f" ({context} at line {cmark.line + 1}, column {cmark.column + 1})"
        raise SpecError(f"{source}: malformed YAML{at}: {problem}") from None
    _check_document(doc, source)
    return _Parser(source).model(doc, default_name)


def _suggest(word: str, valid: list[str] | tuple[str, ...]) -> str:
    word = str(word)
    close = difflib.get_close_matches(word, list(valid), n=1)
    if not close:
        # A spelled-out name ('convolution', 'batch_norm') shares a prefix with the short one.
        close = [v for v in valid if len(v) >= 3 and (word.startswith(v) or v.startswith(word[:4]))][:1]
    return f" — did you mean '{close[0]}'?" if close else ""


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "empty"}.get(type(v), type(v).__name__)


def coerce(value: Any, opt: Option) -> Any:
    """Check ``value`` against ``opt``; return it normalised. Raises ValueError with the rule."""
    t = opt.type
    if value is None and not opt.required and opt.default is None:
        return None
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {_type_name(value)} ({value!r})")
    elif t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {_type_name(value)} ({value!r})")
        value = float(value)
    elif t == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
    elif t == "pair":
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value, value)
        elif (isinstance(value, list) and len(value) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            value = tuple(value)
        else:
            raise ValueError(f"must be an integer or a list of two integers [h, w], got {value!r}")
    elif t == "choice":
        if value not in opt.choices:
            raise ValueError(f"must be one of {', '.join(opt.choices)}, got {value!r}{_suggest(value, opt.choices)}")
    elif t == "table":
        if (not isinstance(value, list) or not value
                or not all(isinstance(r, list) and r and all(v in (0, 1) and not isinstance(v, float) for v in r)
                           for r in value)):
            raise ValueError("must be a list of rows of 0 and 1")
        value = tuple(tuple(int(v) for v in r) for r in value)
    elif t == "sizes":
        if (not isinstance(value, list) or not value
                or not all(isinstance(r, list) and len(r) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in r) for r in value)):
            raise ValueError(f"must be a list of [w, h] pairs of positive numbers, got {value!r}")
        value = tuple((float(w), float(h)) for w, h in value)
    if opt.check is not None:
        rule = opt.check(value)
        if rule:
            raise ValueError(f"{rule}, got {value!r}")
    return value


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv}


def _eval_expr(expr: str, args: dict[str, Any]) -> Any:
    """Evaluate a block expression like ``$filters`` or ``$filters * 4``: names, ints, + - * //."""
    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Name):
            if node.id not in args:
                raise ValueError(f"unknown argument '${node.id}'{_suggest(node.id, list(args))}")
            return args[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"'{expr}' is not a block expression (use $name, integers and + - * //)")

    try:
        return ev(ast.parse(expr.replace("$", ""), mode="eval"))
    except SyntaxError:
        raise ValueError(f"'{expr}' is not a block expression (use $name, integers and + - * //)") from None
    except RecursionError:
        raise ValueError(f"'{expr[:40]}…' is too long a block expression (use $name, integers and + - * //)") \
            from None
    except (ZeroDivisionError, TypeError) as e:
        raise ValueError(f"'{expr}' cannot be computed: {e}") from None


def _substitute(value: Any, args: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return _eval_expr(value, args)
    if isinstance(value, list):
        return [_substitute(v, args) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, args) for k, v in value.items()}
    return value


@dataclass
class _Scope:
    """Names visible while expanding one list of layers (the file's, or one block instance's)."""

    prefix: str                 # prepended to local names: '' or 'layer1.0.'
    input_name: str             # what the local name 'in' (or 'input') refers to
    path: tuple[str, ...]       # enclosing block instances
    blocks: tuple[tuple[str, str], ...]  # (instance, block name) of each enclosing block instance
    where: str                  # location prefix for messages
    local: dict[str, str] = field(default_factory=dict)  # local name -> global name
    counts: dict[str, int] = field(default_factory=dict)
    last: str = ""


class _Parser:
    def __init__(self, source: str):
        self.source = source
        self.nodes: list[NodeSpec] = []
        self.blocks: dict[str, dict] = {}
        self.targets: dict[str, str] = {}  # full name -> the node it stands for (a block -> its last node)

    def fail(self, where: str, msg: str) -> SpecError:
        return SpecError(f"{self.source}: {where}: {msg}" if where else f"{self.source}: {msg}")

    # -- top level --
    def model(self, doc: Any, default_name: str) -> ModelSpec:
        if not isinstance(doc, dict):
            raise self.fail("", f"a model file is a mapping with at least 'input' and 'layers', got {_type_name(doc)}")
        for key in doc:
            if key not in _TOP_KEYS:
                raise self.fail("", f"unknown key '{key}'{_suggest(key, _TOP_KEYS)}")
        for key in ("input", "layers"):
            if key not in doc:
                raise self.fail("", f"missing '{key}'")
        input_shape = self.input_shape(doc["input"])
        self.blocks = self.block_defs(doc.get("blocks") or {})
        layers = doc["layers"]
        if not isinstance(layers, list) or not layers:
            raise self.fail("layers", "must be a non-empty list of layers")
        self.targets["input"] = "input"
        top = _Scope(prefix="", input_name="input", path=(), blocks=(), where="")
        top.last = "input"
        self.expand(layers, top, depth=0)

        output = doc.get("output")
        if output is None:
            mains = [n for n in self.nodes if n.aux is None]
            if not mains:
                raise self.fail("layers", "every layer belongs to an auxiliary head; nothing is the output")
            output = mains[-1].name
        elif output in self.targets and output != "input":
            output = self.targets[output]
        else:
            raise self.fail("output", f"no layer is named '{output}'{_suggest(output, sorted(self.targets))}")

        loss = doc.get("loss", "cross_entropy")
        if loss not in LOSSES:
            raise self.fail("loss", f"must be one of {', '.join(LOSSES)}, got {loss!r}{_suggest(loss, LOSSES)}")
        classes = doc.get("classes")
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 2):
            raise self.fail("classes", f"must be an integer of at least 2, got {classes!r}")
        for key in ("name", "description", "reference"):
            if key in doc and not isinstance(doc[key], str):
                raise self.fail(key, f"must be a string, got {_type_name(doc[key])}")
        train_section = doc.get("train") or {}
        train = self.train(train_section)
        by_dataset = self.train_by_dataset(train_section.get(_PER_DATASET))
        weights = self.weights(doc.get("weights"), input_shape)
        return ModelSpec(
            name=doc.get("name", default_name), source=self.source, input=input_shape,
            nodes=self.nodes, output=output, description=doc.get("description", ""),
            reference=doc.get("reference", ""), classes=classes, loss=loss,
            train=train, train_by_dataset=by_dataset, weights=weights,
        )

    def input_shape(self, value: Any) -> Shape:
        return parse_input_shape(value, lambda msg: self.fail("input", msg))

    def train(self, section: Any, where: str = "train", nested: bool = True) -> dict[str, Any]:
        if not isinstance(section, dict):
            raise self.fail(where, f"must be a mapping, got {_type_name(section)}")
        out = {}
        for key, value in section.items():
            if key == _PER_DATASET and nested:
                continue
            if key not in TRAIN_OPTIONS or (key == "dataset" and not nested):
                known = [k for k in TRAIN_OPTIONS if nested or k != "dataset"] + [_PER_DATASET] * nested
                raise self.fail(where, f"unknown option '{key}'{_suggest(key, known)}")
            try:
                out[key] = coerce(value, TRAIN_OPTIONS[key])
            except ValueError as e:
                raise self.fail(f"{where}.{key}", str(e)) from None
        return out

    def weights(self, section: Any, input_shape: Shape) -> dict[str, PublishedWeights]:
        """The ``weights:`` section, checked against the expanded network (``names`` must name its layers)."""
        if section is None:
            return {}
        if not isinstance(section, dict) or not section:
            raise self.fail("weights", "must be a mapping of names (what --weights gives, e.g. imagenet) to "
                                       f"published weights ({', '.join(_WEIGHTS_KEYS)})")
        return {str(name): self.published(str(name), entry, input_shape) for name, entry in section.items()}

    def published(self, name: str, entry: Any, input_shape: Shape) -> PublishedWeights:
        where = f"weights.{name}"
        if not isinstance(entry, dict):
            raise self.fail(where, f"must be a mapping with {', '.join(_WEIGHTS_KEYS)}, got {_type_name(entry)}")
        for key in entry:
            if key not in _WEIGHTS_KEYS:
                raise self.fail(where, f"unknown key '{key}'{_suggest(key, _WEIGHTS_KEYS)}")
        for key in ("url", "classes", "mean", "std"):
            if key not in entry:
                raise self.fail(where, f"missing '{key}'")
        url = entry["url"]
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise self.fail(f"{where}.url", f"must be an http(s) URL of the weights file, got {url!r}")
        weights = PublishedWeights(name, url, entry["classes"], (), ())
        if not re.fullmatch(r"[^/]+-[0-9a-f]{8,64}\.[A-Za-z0-9]+", weights.filename):
            raise self.fail(f"{where}.url", f"the file name must end in -HASH.EXT, HASH being at least 8 hex digits "
                                            f"of the file's SHA-256 (as in resnet18-f37072fd.pth), got "
                                            f"{weights.filename!r}")
        if entry["classes"] not in CLASS_LISTS:
            raise self.fail(f"{where}.classes", f"must be a class list: {', '.join(CLASS_LISTS)}, got "
                                                f"{entry['classes']!r}{_suggest(str(entry['classes']), CLASS_LISTS)}")
        channels = input_shape[0] if len(input_shape) == 3 else None
        if channels is None:
            raise self.fail(where, f"published weights are for image inputs (C×H×W), the input is {list(input_shape)}")
        stats = {}
        for key in ("mean", "std"):
            value = entry[key]
            if (not isinstance(value, list) or len(value) != channels
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise self.fail(f"{where}.{key}", f"must be a list of {channels} numbers (one per input channel), "
                                                  f"got {value!r}")
            stats[key] = tuple(float(v) for v in value)
        if not all(s > 0 for s in stats["std"]):
            raise self.fail(f"{where}.std", f"must be positive, got {entry['std']!r}")
        resize = entry.get("resize")
        if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int)
                                   or resize < max(input_shape[1:])):
            raise self.fail(f"{where}.resize", f"the shorter side before the centre crop to the input's "
                                               f"{input_shape[1]}×{input_shape[2]}: an integer of at least "
                                               f"{max(input_shape[1:])}, got {resize!r}")
        names = entry.get("names") or {}
        if not isinstance(names, dict):
            raise self.fail(f"{where}.names", f"must map the file's layer names to the model's, got {_type_name(names)}")
        layers = {n.name for n in self.nodes if is_parametric(n.kind)}
        targets: dict[str, str] = {}
        for theirs, ours in names.items():
            if not isinstance(ours, str) or ours not in layers:
                raise self.fail(f"{where}.names.{theirs}", f"must name a layer with parameters of the model, got "
                                                           f"{ours!r}{_suggest(str(ours), sorted(layers))}")
            if ours in targets:
                raise self.fail(f"{where}.names", f"'{targets[ours]}' and '{theirs}' are both mapped to '{ours}'")
            targets[ours] = str(theirs)
        return PublishedWeights(name, url, entry["classes"], stats["mean"], stats["std"], resize,
                                {str(k): v for k, v in names.items()})

    def train_by_dataset(self, section: Any) -> dict[str, dict[str, Any]]:
        where = f"train.{_PER_DATASET}"
        if section is None:
            return {}
        if not isinstance(section, dict):
            raise self.fail(where, f"must be a mapping of dataset names to settings, got {_type_name(section)}")
        out = {}
        for name, settings in section.items():
            if name not in CHOICES:
                raise self.fail(where, f"unknown dataset '{name}' (one of {', '.join(CHOICES)})"
                                       f"{_suggest(str(name), CHOICES)}")
            out[name] = self.train(settings or {}, f"{where}.{name}", nested=False)
        return out

    def block_defs(self, blocks: Any) -> dict[str, dict]:
        if not isinstance(blocks, dict):
            raise self.fail("blocks", f"must be a mapping of block names to definitions, got {_type_name(blocks)}")
        out = {}
        for name, body in blocks.items():
            where = f"blocks.{name}"
            if name in KINDS:
                raise self.fail(where, f"a block cannot be named like the layer kind '{name}'")
            if not isinstance(body, dict) or "layers" not in body:
                raise self.fail(where, "a block is a mapping with 'layers' (and optional 'args')")
            for key in body:
                if key not in ("args", "layers", "description"):
                    raise self.fail(where, f"unknown key '{key}'{_suggest(key, ('args', 'layers', 'description'))}")
            args = body.get("args") or {}
            if not isinstance(args, dict):
                raise self.fail(f"{where}.args", "must be a mapping of argument names to defaults (~ for required)")
            for a in args:
                if a in _BLOCK_USE_OPTIONS:
                    raise self.fail(f"{where}.args", f"'{a}' is reserved for every block use")
            if not isinstance(body["layers"], list) or not body["layers"]:
                raise self.fail(f"{where}.layers", "must be a non-empty list of layers")
            out[name] = body
        return out

    # -- layer lists --
    def expand(self, entries: list, scope: _Scope, depth: int) -> None:
        for i, entry in enumerate(entries):
            where = f"{scope.where}layers[{i}]"
            kind, opts = self.split_entry(entry, where)
            if kind in self.blocks:
                self.use_block(kind, opts, scope, f"{where} ({kind})", depth)
            elif kind in KINDS:
                self.layer(kind, opts, scope, f"{where} ({kind})")
            else:
                valid = list(KINDS) + list(self.blocks)
                raise self.fail(where, f"unknown layer kind '{kind}'{_suggest(kind, valid)}")

    def split_entry(self, entry: Any, where: str) -> tuple[str, dict]:
        if isinstance(entry, str):
            return entry, {}
        if isinstance(entry, dict) and len(entry) == 1:
            kind, opts = next(iter(entry.items()))
            if opts is None:
                opts = {}
            if not isinstance(opts, dict):
                raise self.fail(f"{where} ({kind})",
                                f"options must be a mapping like {{kernel: 3}}, got {_type_name(opts)} ({opts!r})")
            return str(kind), dict(opts)
        raise self.fail(where, "each layer is a kind (e.g. '- relu') or a kind with options "
                               "(e.g. '- conv: {filters: 6, kernel: 5}')")

    def new_name(self, scope: _Scope, local: Any, base: str, where: str) -> str:
        # Every layer of a kind counts, named or not, so the third conv of a scope is conv3.
        scope.counts[base] = scope.counts.get(base, 0) + 1
        if local is None:
            local = f"{base}{scope.counts[base]}"
            while scope.prefix + local in self.targets:
                scope.counts[base] += 1
                local = f"{base}{scope.counts[base]}"
        elif not isinstance(local, str) or not local or "/" in local:
            raise self.fail(where, f"name must be a non-empty string without '/', got {local!r}")
        elif local in ("in", "input"):
            raise self.fail(where, f"'{local}' is reserved for the input")
        full = scope.prefix + local
        if full in self.targets:
            raise self.fail(where, f"name '{full}' is used twice")
        scope.local[local] = full
        self.targets[full] = full
        return full

    def ref(self, scope: _Scope, name: Any, where: str) -> str:
        if not isinstance(name, str):
            raise self.fail(where, f"inputs are layer names, got {_type_name(name)} ({name!r})")
        if name in ("in", "input"):
            return scope.input_name
        if name in scope.local:
            return scope.local[name]
        if name in self.targets and not scope.path:
            return self.targets[name]
        known = sorted(scope.local) + ["in"]
        raise self.fail(where, f"input '{name}' is not a layer defined above{_suggest(name, known)}")

    def inputs(self, opts: dict, scope: _Scope, where: str) -> tuple[str, ...]:
        if "input" in opts and "inputs" in opts:
            raise self.fail(where, "give either 'input' or 'inputs', not both")
        if "inputs" in opts:
            names = opts.pop("inputs")
            if not isinstance(names, list) or not names:
                raise self.fail(where, f"inputs must be a list of layer names, got {names!r}")
            return tuple(self.ref(scope, n, where) for n in names)
        if "input" in opts:
            return (self.ref(scope, opts.pop("input"), where),)
        return (scope.last,)

    def layer(self, kind: str, opts: dict, scope: _Scope, where: str) -> None:
        k = KINDS[kind]
        local_name = opts.pop("name", None)
        if local_name is not None:
            where = f"{where[:-1]} '{local_name}')"
        inputs = self.inputs(opts, scope, where)
        if not k.min_inputs <= len(inputs) <= k.max_inputs:
            want = (f"{k.min_inputs}" if k.min_inputs == k.max_inputs
                    else f"at least {k.min_inputs}")
            raise self.fail(where, f"takes {want} input{'s' if k.min_inputs > 1 else ''}, got {len(inputs)}"
                            + (" (list them with inputs: [a, b])" if k.min_inputs > 1 else ""))
        aux = opts.pop("aux", None)
        if aux is not None and (isinstance(aux, bool) or not isinstance(aux, (int, float)) or aux <= 0):
            raise self.fail(where, f"aux is the weight of this auxiliary output's loss, a positive number, got {aux!r}")
        init = opts.pop("init", None)
        if init is not None:
            if not is_parametric(kind):
                raise self.fail(where, f"init is only for layers with parameters; {kind} has none")
            if not isinstance(init, (str, dict)):
                raise self.fail(where, "init is a scheme name or a mapping {weight: [...], bias: [...]}")
        options = {}
        for key, value in opts.items():
            if key not in k.options:
                valid = list(k.options) + list(COMMON_OPTIONS)
                raise self.fail(where, f"unknown option '{key}'{_suggest(key, valid)}")
            try:
                options[key] = coerce(value, k.options[key])
            except ValueError as e:
                raise self.fail(where, f"{key} {e}") from None
        for key, opt in k.options.items():
            if key not in options:
                if opt.required:
                    raise self.fail(where, f"missing option '{key}' ({opt.doc or opt.type})")
                options[key] = coerce(opt.default, opt)
        if "stride" in options and options["stride"] is None:
            options["stride"] = options["kernel"]
        name = self.new_name(scope, local_name, kind, where)
        where = f"{where.rsplit(' (', 1)[0]} ({kind} '{name}')"
        self.nodes.append(NodeSpec(name=name, kind=kind, options=options, inputs=inputs, where=where,
                                   scope=scope.path, blocks=scope.blocks, aux=float(aux) if aux is not None else None, init=init))
        scope.last = name

    def use_block(self, block: str, opts: dict, scope: _Scope, where: str, depth: int) -> None:
        if depth >= _MAX_BLOCK_DEPTH:
            raise self.fail(where, f"blocks nest deeper than {_MAX_BLOCK_DEPTH} levels (does a block use itself?)")
        body = self.blocks[block]
        declared = body.get("args") or {}
        repeat = opts.pop("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise self.fail(where, f"repeat must be a positive integer, got {repeat!r}")
        local_name = opts.pop("name", None)
        start = self.inputs(opts, scope, where)
        if len(start) != 1:
            raise self.fail(where, "a block takes one input")
        args = {}
        for key, value in opts.items():
            if key not in declared:
                raise self.fail(where, f"unknown argument '{key}' for block '{block}'"
                                       f"{_suggest(key, list(declared) + list(_BLOCK_USE_OPTIONS))}")
            args[key] = value
        for key, default in declared.items():
            if key not in args:
                if default is None:
                    raise self.fail(where, f"block '{block}' needs argument '{key}'")
                args[key] = default
        instance = self.new_name(scope, local_name, block, where)
        last = start[0]
        for r in range(repeat):
            inst = instance if repeat == 1 else f"{instance}.{r}"
            path = scope.path + ((instance, inst) if repeat > 1 else (inst,))
            inner = _Scope(prefix=inst + ".", input_name=last, path=path,
                           blocks=scope.blocks + ((inst, block),), where=f"{where[:-1]} '{inst}') → ")
            inner.last = last
            try:
                layers = _substitute(body["layers"], args)
            except ValueError as e:
                raise self.fail(f"{where} → blocks.{block}", str(e)) from None
            self.expand(layers, inner, depth + 1)
            last = inner.last
            self.targets[inst] = last
        # The block's output is its last layer; downstream layers refer to it by the instance name.
        scope.local[instance[len(scope.prefix):]] = last
        self.targets[instance] = last
        scope.last = last


def parse_input_shape(value: Any, fail) -> Shape:
    """``[1, 28, 28]``, ``"1x28x28"`` or ``[784]`` → a shape tuple."""
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise fail(f"must look like 3x224x224 (C×H×W) or [3, 224, 224], got {value!r}") from None
    if (not isinstance(value, list) or len(value) not in (1, 3)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise fail(f"must be [C, H, W] (or [features]) of positive integers, got {value!r}")
    return tuple(value)
