"""Model files: what loads, what every mistake says, and a fuzz test of the loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli.errors import CnnError, ShapeError, SpecError, UnknownModel
from cnncli.model import graph, spec

LENET_LAYERS = """
  - conv: {filters: 6, kernel: 5, padding: 2}
  - tanh
  - avgpool: {kernel: 2}
  - conv: {filters: 16, kernel: 5}
  - tanh
  - avgpool: {kernel: 2}
  - flatten
  - dense: {units: 120}
  - tanh
  - dense: {units: 84}
  - tanh
  - dense: {units: 10}
"""


def load(text: str) -> spec.ModelSpec:
    return spec.parse(text, "models/x.yaml")


def test_sequential_model_names_layers_by_kind_and_count():
    m = load("input: [1, 28, 28]\nlayers:" + LENET_LAYERS)
    assert [n.name for n in m.nodes][:4] == ["conv1", "tanh1", "avgpool1", "conv2"]
    assert m.output == "dense3"
    g = graph.build(m)
    assert g.total_params == 61706 and g.macs == 416520
    assert g.param_shapes()["conv1.weight"] == (6, 1, 5, 5)
    assert g.param_shapes()["dense1.weight"] == (400, 120)


def test_input_size_can_be_written_as_text_and_overridden():
    m = load("input: 1x28x28\nlayers:" + LENET_LAYERS)
    assert m.input == (1, 28, 28)
    g = graph.build(m, input_shape=(1, 32, 32))
    assert g["flatten1"].out_shape == (16 * 6 * 6,)


def test_blocks_expand_with_arguments_expressions_and_repeat():
    m = load("""
input: [4, 8, 8]
blocks:
  bottleneck:
    args: {filters: ~, stride: 1}
    layers:
      - conv: {filters: $filters, kernel: 1}
      - conv: {filters: $filters, kernel: 3, stride: $stride, padding: 1}
      - conv: {filters: $filters * 4, kernel: 1}
layers:
  - bottleneck: {name: layer1, filters: 2, repeat: 2}
  - bottleneck: {filters: 3, stride: 2}
""")
    names = [n.name for n in m.nodes]
    assert names[:3] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3"]
    assert names[3] == "layer1.1.conv1" and m.nodes[3].inputs == ("layer1.0.conv3",)
    assert m.nodes[3].scope == ("layer1", "layer1.1")
    assert names[6] == "bottleneck2.conv1" and m.nodes[6].inputs == ("layer1.1.conv3",)
    g = graph.build(m)
    assert g.output_shape == (12, 4, 4)


def test_a_block_instance_name_refers_to_its_last_layer():
    m = load("""
input: [2, 4, 4]
blocks:
  pair:
    layers: [relu, tanh]
layers:
  - pair: {name: p}
  - conv: {filters: 2, kernel: 1}
  - add: {inputs: [p, conv1]}
""")
    assert m.node("add1").inputs == ("p.tanh1", "conv1")


BAD = [
    ("input: [1, 28, 28]\nlayers:\n  - conv: {filter: 6, kernel: 5}\n",
     "models/x.yaml: layers[0] (conv): unknown option 'filter' — did you mean 'filters'?"),
    ("input: [1, 28, 28]\nlayers:\n  - convv: {filters: 6, kernel: 5}\n",
     "layers[0]: unknown layer kind 'convv' — did you mean 'conv'?"),
    ("input: [1, 28, 28]\nlayers:\n  - conv: {filters: 6}\n", "missing option 'kernel'"),
    ("input: [1, 28, 28]\nlayers:\n  - conv: {filters: -6, kernel: 5}\n", "filters must be positive, got -6"),
    ("input: [1, 28, 28]\nlayers:\n  - conv: {filters: 6.5, kernel: 5}\n", "filters must be an integer"),
    ("input: [1, 28, 28]\nlayers:\n  - conv: {filters: 6, kernel: [5, 5, 5]}\n", "list of two integers"),
    ("input: [1, 28, 28]\nlayers:\n  - dropout: {rate: 1.5}\n", "rate must be in [0, 1)"),
    ("input: [1, 28, 28]\nlayers:\n  - add: {inputs: [input]}\n", "takes at least 2 inputs, got 1"),
    ("input: [1, 28, 28]\nlayers:\n  - relu: {input: nowhere}\n", "input 'nowhere' is not a layer defined above"),
    ("input: [1, 28, 28]\nlayers:\n  - relu: {name: a}\n  - relu: {name: a}\n", "name 'a' is used twice"),
    ("input: [1, 28, 28]\nlayer:\n  - relu\n", "unknown key 'layer' — did you mean 'layers'?"),
    ("layers:\n  - relu\n", "missing 'input'"),
    ("input: [1, 28]\nlayers:\n  - relu\n", "input: must be [C, H, W]"),
    ("input: [1, 28, 28]\nloss: crossentropy\nlayers:\n  - relu\n", "did you mean 'cross_entropy'?"),
    ("input: [1, 28, 28]\ntrain: {lr: -1}\nlayers:\n  - relu\n", "train.lr: must be positive"),
    ("input: [1, 28, 28]\ntrain: {epoch: 3}\nlayers:\n  - relu\n", "did you mean 'epochs'?"),
    ("input: [1, 28, 28]\ntrain: {datasets: {fashion_mnist: {epochs: 3}}}\nlayers:\n  - relu\n",
     "train.datasets: unknown dataset 'fashion_mnist'"),
    ("input: [1, 28, 28]\ntrain: {datasets: {mnist: {epoch: 3}}}\nlayers:\n  - relu\n",
     "train.datasets.mnist: unknown option 'epoch' — did you mean 'epochs'?"),
    ("input: [1, 28, 28]\ntrain: {datasets: {mnist: {dataset: cifar10}}}\nlayers:\n  - relu\n",
     "train.datasets.mnist: unknown option 'dataset'"),
    ("input: [1, 28, 28]\ntrain: {datasets: {mnist: {lr: 0}}}\nlayers:\n  - relu\n",
     "train.datasets.mnist.lr: must be positive"),
    ("input: [1, 28, 28]\ntrain: {datasets: [mnist]}\nlayers:\n  - relu\n",
     "train.datasets: must be a mapping of dataset names to settings"),
    ("input: [1, 28, 28]\nlayers:\n  - relu: 3\n", "options must be a mapping"),
    ("input: [1, 28, 28]\nlayers:\n  - [relu]\n", "each layer is a kind"),
    ("input: [1, 28, 28]\nlayers:\n  - conv: {filters: 2, kernel: 3\n", "malformed YAML at line 4, column 1"),
    ("input: [1, 28, 28]\nlayers:\n  - relu: {init: he}\n", "init is only for layers with parameters"),
    ("input: [3]\nlayers:\n  - dense: {units: 2, init: {weight: [[1, 2]]}}\n",
     "init.weight has shape 1×2 but the layer needs 3×2"),
    ("input: [3]\nlayers:\n  - dense: {units: 2, init: {gain: 1}}\n", "'gain' is not a parameter"),
    ("input: [1, 8, 8]\nblocks:\n  b:\n    args: {f: ~}\n    layers:\n      - conv: {filters: $f, kernel: 1}\n"
     "layers:\n  - b: {}\n", "block 'b' needs argument 'f'"),
    ("input: [1, 8, 8]\nblocks:\n  b:\n    layers:\n      - conv: {filters: $g, kernel: 1}\n"
     "layers:\n  - b\n", "unknown argument '$g'"),
    ("input: [1, 8, 8]\nblocks:\n  b:\n    layers:\n      - b\nlayers:\n  - b\n", "nest deeper than"),
    ("input: [1, 8, 8]\nblocks:\n  b:\n    layers:\n      - conv: {filters: __import__, kernel: 1}\n"
     "layers:\n  - b\n", "filters must be an integer"),
    ("input: [1, 8, 8]\nblocks:\n  b:\n    layers:\n      - conv: {filters: \"$__import__('os')\", kernel: 1}\n"
     "layers:\n  - b\n", "is not a block expression"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m[:40] for _, m in BAD])
def test_mistakes_are_spec_errors_that_say_what_and_where(text, message):
    with pytest.raises(SpecError) as e:
        graph.build(load(text))
    assert message in str(e.value)
    assert str(e.value).startswith("models/x.yaml")


SHAPE_BAD = [
    ("input: [1, 5, 5]\nlayers:\n  - conv: {filters: 2, kernel: 7}\n",
     "layers[0] (conv 'conv1'): kernel (=7×7) is larger than its input (5×5); input from the input (1×5×5)"),
    ("input: [1, 8, 8]\nlayers:\n  - conv: {filters: 2, kernel: 3}\n  - dense: {units: 3}\n",
     "layers[1] (dense 'dense1'): dense needs a flat input (features), got 2×6×6; add a flatten layer"),
    ("input: [2, 8, 8]\nlayers:\n  - conv: {filters: 3, kernel: 3, padding: 1}\n  - add: {inputs: [input, conv1]}\n",
     "inputs have different shapes; input from the input (2×8×8); input from layers[0] (conv 'conv1') (3×8×8)"),
    ("input: [3, 8, 8]\nlayers:\n  - conv: {filters: 4, kernel: 3, groups: 2}\n",
     "groups (=2) does not divide its input channels (=3)"),
    ("input: [3, 8, 8]\nlayers:\n  - maxpool: {kernel: 2, padding: 2}\n", "padding (=2×2) must be at most half"),
    ("input: [3, 8, 8]\nlayers:\n  - conv: {filters: 2, kernel: 3, connections: [[1, 0], [0, 1]]}\n",
     "connections must be a 2×3 table"),
]


@pytest.mark.parametrize("text,message", SHAPE_BAD, ids=[m[:30] for _, m in SHAPE_BAD])
def test_shape_errors_name_the_layers_and_shapes(text, message):
    with pytest.raises(ShapeError) as e:
        graph.build(load(text))
    assert message in str(e.value)


def test_an_input_the_network_cannot_take_names_the_layer_where_it_breaks():
    m = load("input: [1, 28, 28]\nlayers:" + LENET_LAYERS)
    with pytest.raises(ShapeError) as e:
        graph.build(m, input_shape=(1, 8, 8))
    assert "layers[3] (conv 'conv2')" in str(e.value) and "network input 1×8×8" in str(e.value)


def test_unknown_model_lists_the_builtins():
    with pytest.raises(SpecError) as e:
        spec.load("lenet6")
    assert "did you mean 'lenet5'" in str(e.value) and "built-in models:" in str(e.value)


def test_missing_model_file():
    with pytest.raises(SpecError, match="does not exist"):
        spec.load("no/such/model.yaml")


def test_every_builtin_model_loads_and_infers_its_shapes():
    for name in spec.builtin_names():
        g = graph.build(spec.load(name))
        assert g.total_params > 0, name


# --- fuzz: the loader either loads or raises the tool's own error ---------------------

_words = st.sampled_from(["conv", "dense", "relu", "add", "concat", "maxpool", "filters", "kernel",
                          "units", "inputs", "input", "name", "layers", "blocks", "args", "$f",
                          "stride", "padding", "groups", "aux", "init", "weight", "bias", "repeat"])
_scalars = st.one_of(st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                     st.none(), _words, st.text(max_size=6))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_words, inner, max_size=4)),
                       max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(st.sampled_from(["input", "layers", "blocks", "train", "loss", "output", "classes"]),
                           _values, max_size=6))
def test_random_documents_load_or_raise_spec_errors(doc):
    _load_or_spec_error(yaml.safe_dump(doc))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_model_files_load_or_raise_spec_errors(data):
    text = "input: [1, 28, 28]\nlayers:" + LENET_LAYERS
    chars = list(text)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(chars) - 1))
        op = data.draw(st.sampled_from(["delete", "replace", "insert"]))
        ch = data.draw(st.sampled_from(list("{}[]:,- \n0123456789abcxyz$'\"")))
        if op == "delete":
            del chars[pos]
        elif op == "replace":
            chars[pos] = ch
        else:
            chars.insert(pos, ch)
    _load_or_spec_error("".join(chars))


def _load_or_spec_error(text: str) -> None:
    try:
        graph.build(spec.parse(text, "fuzz.yaml"))
    except CnnError as e:
        assert str(e).startswith("fuzz.yaml"), str(e)


# --- documents a loader must refuse without recursing or expanding forever ----------


@pytest.mark.parametrize("layers", [
    "[" * 5000 + "]" * 5000,
    "{a: " * 5000 + "1" + "}" * 5000,
    "\n" + "".join("  " * i + "-\n" for i in range(1, 300)),
], ids=["flow lists", "flow mappings", "block lists"])
def test_a_deeply_nested_document_is_a_spec_error(layers):
    with pytest.raises(SpecError, match=r"nest deeper than 100 levels \(at line \d+, column \d+\)"):
        load("input: [1, 28, 28]\nlayers: " + layers + "\n")


def test_nesting_up_to_the_limit_reaches_the_usual_checks():
    with pytest.raises(SpecError, match="description: must be a string"):
        load("input: [4]\ndescription: " + "[" * 99 + "]" * 99 + "\nlayers: [relu]\n")
    with pytest.raises(SpecError, match="nest deeper than 100 levels"):
        load("input: [4]\ndescription: " + "[" * 100 + "]" * 100 + "\nlayers: [relu]\n")


def test_aliases_cannot_nest_deeper_loop_or_explode():
    deep = "[" * 60 + "]" * 60
    with pytest.raises(SpecError, match="nest deeper than 100 levels"):
        load(f"input: [4]\ndescription: &a {deep}\nreference: {'[' * 60}*a{']' * 60}\nlayers: [relu]\n")
    with pytest.raises(SpecError, match="alias"):
        load("input: [4]\nlayers:\n  - dense: {units: 3, init: {weight: &x [*x]}}\n")
    # 10 values, each level ten aliases of the one before: 10^12 values if expanded ("billion laughs").
    laughs = "".join(f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 12))
    with pytest.raises(SpecError, match="aliases expand to more than 10,000,000 values"):
        load("input: [4]\ndescription:\n  - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + laughs + "layers: [relu]\n")


def test_a_model_file_over_10_mb_is_refused_before_it_is_parsed(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("input: [4]\nlayers: [relu]\n" + "#" * 10_000_000 + "\n")
    with pytest.raises(SpecError, match=r"at most 10 MB \(10,000,000 bytes\)"):
        spec.load(str(big))


@pytest.mark.parametrize("expr,message", [("$a" + "+1" * 50_000, "too long a block expression"),
                                          ("$a // 0", "cannot be computed")])
def test_block_expressions_that_cannot_be_computed_are_spec_errors(expr, message):
    with pytest.raises(SpecError, match=message):
        load(f"input: [4]\nblocks:\n  b: {{args: {{a: 3}}, layers: [{{dense: {{units: '{expr}'}}}}]}}\n"
             "layers:\n  - b\n")


def test_an_unknown_model_name_is_its_own_spec_error():
    with pytest.raises(UnknownModel, match="unknown model 'lenet6'"):
        spec.resolve("lenet6")


def test_node_spec_records_the_block_of_each_instance():
    m = load("input: [1, 8, 8]\nblocks:\n  inner: {layers: [relu]}\n"
             "  outer: {layers: [{conv: {filters: 2, kernel: 3, padding: 1}}, inner]}\n"
             "layers:\n  - outer: {name: stage, repeat: 2}\n")
    relu = m.node("stage.1.inner1.relu1")
    assert relu.scope == ("stage", "stage.1", "stage.1.inner1")
    assert relu.blocks == (("stage.1", "outer"), ("stage.1.inner1", "inner"))



def test_a_datasets_entry_replaces_the_train_settings_for_that_dataset_only():
    m = load("""
input: [1, 28, 28]
train:
  dataset: cifar10
  epochs: 182
  weight_decay: 0.0001
  datasets:
    fashion-mnist: {epochs: 30, weight_decay: 0.0005}
    cifar10: {lr: 0.2}
layers:
  - relu
""")
    assert m.train_setting("epochs") == 182  # the file's own section, entries aside
    own = m.train_settings()
    assert (own["dataset"], own["epochs"], own["lr"], own["weight_decay"]) == ("cifar10", 182, 0.2, 0.0001)
    other = m.train_settings("fashion-mnist")
    assert (other["dataset"], other["epochs"], other["lr"], other["weight_decay"]) == ("fashion-mnist", 30, 0.01, 0.0005)
    plain = m.train_settings("mnist")
    assert (plain["epochs"], plain["weight_decay"]) == (182, 0.0001)


def test_the_model_format_guides_first_example_is_a_valid_model():
    """models/README.md's complete example (with its train: datasets: entry) loads as written."""
    text = (Path(__file__).resolve().parents[1] / "models" / "README.md").read_text(encoding="utf-8")
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    m = load(example)
    assert m.name == "tiny" and m.train_settings("fashion-mnist")["epochs"] == 20
    assert graph.build(m).output_shape == (10,)


def test_classes_must_be_what_the_network_outputs(tmp_path):
    """``classes: 3`` beside a last layer of 10 units trained and scored 10 classes without a word."""
    from cnncli.errors import ShapeError
    from cnncli.model import graph

    path = tmp_path / "three.yaml"
    path.write_text("name: three\ninput: [1, 4, 4]\nclasses: 3\nlayers:\n  - flatten\n"
                    "  - dense: {name: fc, units: 10}\n")
    with pytest.raises(ShapeError, match=r"classes: 3, but the network outputs 10 \(its last layer fc has "
                                         r"units: 10\)"):
        graph.build(spec.load(str(path)))
    path.write_text(path.read_text().replace("units: 10", "units: 3"))
    assert graph.build(spec.load(str(path))).output_shape == (3,)
