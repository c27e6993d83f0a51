"""``cnncli summarize`` and ``cnncli models``: exact counts of every built-in model, folding,
other input sizes, the JSON contract, golden tables and the command line.

Where the expected counts come from: every parameter and MAC count in ``EXPECTED``
is re-derived here layer by layer from the model files' options by closed-form
formulas (``closed_form`` below: conv and dense weights and biases, batch norm and
subsampling's two numbers per channel, nothing for ResNet's option-A shortcut;
MACs = out_h·out_w·filters·in_channels/groups·kh·kw for a convolution, in·units for
a dense layer), with every output shape recomputed by
PyTorch's window formula, and the sums must equal the totals. Independently of
that, the totals that torchvision publishes (``PUBLISHED``) must agree,
LeNet-5 (1998)'s per-layer counts are the paper's, and the CIFAR-10 ResNets'
totals equal a closed form of the whole network (``resnet_cifar``) and He et
al.'s Table 6. Nothing here imports torch.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cnncli.cli import app, main
from cnncli.commands.summary import Summary, builtin_models, summarize
from cnncli.errors import CnnError, ShapeError, SpecError, UsageError
from cnncli.model import graph, spec
from cnncli.render import summary as render

# name: (total params, trainable params, MACs of one sample at the model's input size),
# each the sum of the closed-form per-layer counts (test_totals_are_the_sums_of_closed_form_layer_counts).
# GoogLeNet counts its two auxiliary heads (training); without them see PUBLISHED.
EXPECTED = {
    "lenet5": (61_706, 61_706, 416_520),
    "lenet5-1998": (60_840, 60_000, 326_520),
    "alexnet": (61_100_840, 61_100_840, 714_188_480),
    "alexnet-2012": (60_965_224, 60_965_224, 724_406_816),
    "vgg16": (138_357_544, 138_357_544, 15_470_264_320),
    "resnet18": (11_689_512, 11_689_512, 1_814_073_344),
    "resnet34": (21_797_672, 21_797_672, 3_663_761_408),
    "resnet50": (25_557_032, 25_557_032, 4_089_184_256),
    "googlenet": (13_004_888, 13_004_888, 1_506_748_416),
    "slide-mlp": (36, 36, 27),
    # CIFAR-10 networks (3×32×32, 10 classes). ResNets and plain nets: resnet_cifar(n) below, in closed form.
    "resnet20": (269_722, 269_722, 40_551_040),
    "resnet32": (464_154, 464_154, 68_862_592),
    "resnet44": (658_586, 658_586, 97_174_144),
    "resnet56": (853_018, 853_018, 125_485_696),
    "resnet110": (1_727_962, 1_727_962, 252_887_680),
    "plain20": (269_722, 269_722, 40_551_040),
    "plain32": (464_154, 464_154, 68_862_592),
    "plain44": (658_586, 658_586, 97_174_144),
    "plain56": (853_018, 853_018, 125_485_696),
    # VGG with batch norm: the convolutions with their biases, 2 per channel of batch norm, fc 512·10 + 10.
    # vgg11-bn: convs 1,792 + 73,856 + 295,168 + 590,080 + 1,180,160 + 3 · 2,359,808 = 9,220,480,
    # batch norm 2 · (64 + 128 + 2·256 + 4·512) = 5,504, fc 5,130.
    "vgg11-bn": (9_231_114, 9_231_114, 152_769_536),
    # vgg16-bn: convs as vgg16's (138,357,544 less its three dense layers, 123,642,856) = 14,714,688,
    # batch norm 2 · (2·64 + 2·128 + 3·256 + 6·512) = 8,448, fc 5,130.
    "vgg16-bn": (14_728_266, 14_728_266, 313_201_664),
    # googlenet-cifar: googlenet's nine inception modules (6,624,904 without the aux heads, less its stem
    # 9,536 + 4,224 + 110,976 and fc 1,025,000: 5,475,168), a stem 3·192·9 + 2·192 = 5,568, fc 1024·10 + 10.
    "googlenet-cifar": (5_490_986, 5_490_986, 1_337_141_248),
    # alexnet-cifar: convs 1,792 + 110,784 + 663,936 + 884,992 + 590,080 = 2,251,584,
    # fc6 4096·1024 + 1024, fc7 1024·1024 + 1024, fc8 1024·10 + 10.
    "alexnet-cifar": (7_506_762, 7_506_762, 172_173_312),
}


def resnet_cifar(n: int) -> tuple[int, int]:
    """(parameters, MACs) of He et al.'s CIFAR-10 ResNet with 6n + 2 layers (section 4.2), option A.

    3×3 convolutions without bias, each followed by batch norm (2 parameters per channel):
      stem        conv 3→16: 3·16·9 = 432, batch norm 32;       head: fc 64·10 + 10 = 650
      stage 1     n blocks of two convs 16→16:   n · (2·16·16·9 + 2·32)       = 4,672 n
      stage 2     first block 16→32, 32→32:          16·32·9 + 32·32·9 + 2·64  = 13,952
                  then n − 1 blocks:          (n − 1) · (2·32·32·9 + 2·64)     = 18,560 (n − 1)
      stage 3     first block 32→64, 64→64:          32·64·9 + 64·64·9 + 2·128 = 55,552
                  then n − 1 blocks:          (n − 1) · (2·64·64·9 + 2·128)    = 73,984 (n − 1)
      shortcuts   identity or subsample-and-zero-pad: 0
    total = 1,114 + 13,952 + 55,552 + 4,672 n + 92,544 (n − 1) = 97,216 n − 21,926.

    MACs: every stride-1 conv of a stage costs 32·32·16·16·9 = 16·16·32·32·9 = 8·8·64·64·9 = 2,359,296
    (the area quarters as the channels double), so a block costs 4,718,592; a stage's first block
    16·16·(16·32·9 + 32·32·9) = 8·8·(32·64·9 + 64·64·9) = 3,538,944; the stem 32·32·16·27 = 442,368,
    fc 640. total = 442,368 + 640 + 2 · 3,538,944 + (3n − 2) · 4,718,592. A plain net has the same
    layers without the shortcuts, so the same counts.
    """
    params = 97_216 * n - 21_926
    macs = 442_368 + 640 + 2 * 3_538_944 + (3 * n - 2) * 4_718_592
    return params, macs


# He et al. 2016, Table 6: "# params" of the CIFAR-10 ResNets, as printed (in millions).
TABLE6 = {"resnet20": "0.27", "resnet32": "0.46", "resnet44": "0.66", "resnet56": "0.85", "resnet110": "1.7"}

# torchvision's published figures for its ImageNet weights (IMAGENET1K_V1): "num_params" and
# "GFLOPS" (in units of 10^9, 2 decimals) on each model's page,
# https://pytorch.org/vision/stable/models/generated/torchvision.models.<name>.html
# (googlenet's are for inference, without the auxiliary heads). The GFLOPS figures equal the
# multiply-accumulates of the conv and linear layers, as summarize counts them, to the 2 decimals.
PUBLISHED = {
    "alexnet": (61_100_840, 0.71),
    "vgg16": (138_357_544, 15.47),
    "resnet18": (11_689_512, 1.81),
    "resnet34": (21_797_672, 3.66),
    "resnet50": (25_557_032, 4.09),
    "googlenet": (6_624_904, 1.50),
}


@pytest.fixture(scope="module")
def summaries() -> dict[str, Summary]:
    return {}


def get(cache: dict, name: str, **kw) -> Summary:
    key = (name, tuple(sorted(kw.items())))
    if key not in cache:
        cache[key] = summarize(name, **kw)
    return cache[key]


def render_text(s: Summary, fmt: str = "table", depth: int | None = None, width: int = 100) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False,
                      force_jupyter=False, highlight=False, soft_wrap=False, emoji=False)
    render.show_summary(s, fmt, depth, console)
    return buf.getvalue()


# --- counts -----------------------------------------------------------------------------

def _window(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil: bool = False) -> int:
    """PyTorch's output length of a sliding window (Conv2d / MaxPool2d docs), ceil_mode's last-window rule included."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if not ceil:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def closed_form(kind: str, o: dict, ins: list[tuple[int, ...]]) -> tuple[tuple[int, ...], int, int]:
    """(output shape, parameters, MACs of one sample) of a layer, from its options and input shapes."""
    x = ins[0]
    if kind == "conv":
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = o["kernel"], o["stride"], o["padding"], o["dilation"]
        f, c, g = o["filters"], x[0], o["groups"]
        out = (f, _window(x[1], kh, sh, ph, dh), _window(x[2], kw, sw, pw, dw))
        # A connection table (LeNet-5's C3) keeps only its 1s of the filter × channel pairs.
        pairs = f * (c // g) if o["connections"] is None else sum(map(sum, o["connections"]))
        return out, pairs * kh * kw + (f if o["bias"] else 0), out[1] * out[2] * pairs * kh * kw
    if kind in ("maxpool", "avgpool", "subsample"):
        (kh, kw), (sh, sw), (ph, pw) = o["kernel"], o["stride"], o["padding"]
        ceil = o.get("ceil_mode", False)
        out = (x[0], _window(x[1], kh, sh, ph, 1, ceil), _window(x[2], kw, sw, pw, 1, ceil))
        return out, (2 * x[0] if kind == "subsample" else 0), 0  # subsample: a coefficient and a bias per map
    if kind == "dense":
        return (o["units"],), x[0] * o["units"] + (o["units"] if o["bias"] else 0), x[0] * o["units"]
    if kind == "batchnorm":
        return x, 2 * x[0], 0  # scale and shift per channel (the running statistics are not parameters)
    if kind == "adaptive_avgpool":
        return (x[0], *o["output"]), 0, 0
    if kind == "global_avgpool":
        return (x[0],), 0, 0
    if kind == "flatten":
        return (math.prod(x),), 0, 0
    if kind == "concat":
        return (sum(i[0] for i in ins), *x[1:]), 0, 0
    if kind == "shortcut_pad":  # x[:, :, ::s, ::s] plus zero channels: ⌈h/s⌉ × ⌈w/s⌉, no parameters
        sh, sw = o["stride"]
        return (o["channels"], -(-x[1] // sh), -(-x[2] // sw)), 0, 0
    assert kind in ("relu", "leaky_relu", "sigmoid", "tanh", "softmax", "dropout", "lrn", "add"), kind
    return x, 0, 0


def _closed_form_rows(name: str, aux: bool = True) -> dict[str, tuple[tuple[int, ...], int, int, bool]]:
    """Every layer's (shape, params, MACs, trainable) by closed_form, shapes carried from the model's input."""
    g = graph.build(spec.load(name), aux=aux)  # the file's layers, wiring and options (shapes recomputed here)
    shapes = {"input": tuple(g.input_shape)}
    rows = {}
    for node in g.nodes:
        shape, params, macs = closed_form(node.kind, node.options, [shapes[i] for i in node.inputs])
        shapes[node.name] = shape
        rows[node.name] = (shape, params, macs, node.options.get("trainable", True))
    return rows


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_totals_are_the_sums_of_closed_form_layer_counts(name, summaries):
    expect = _closed_form_rows(name)
    s = get(summaries, name)
    got = {r.name: (tuple(r.output_shape), r.params, r.macs, r.trainable) for r in s.layers}
    assert got == expect
    total, trainable, macs = EXPECTED[name]
    assert sum(p for _, p, _, _ in expect.values()) == total
    assert sum(p for _, p, _, t in expect.values() if t) == trainable
    assert sum(m for _, _, m, _ in expect.values()) == macs


def test_closed_form_by_hand_for_a_few_layers():
    # resnet18's first convolution: 64 filters 7×7 over 3 channels, stride 2, padding 3, no bias, on 224×224.
    assert closed_form("conv", {"kernel": (7, 7), "stride": (2, 2), "padding": (3, 3), "dilation": (1, 1),
                                "filters": 64, "groups": 1, "bias": False, "connections": None},
                       [(3, 224, 224)]) == ((64, 112, 112), 9_408, 112 * 112 * 64 * 3 * 49)
    # AlexNet-2012's second convolution: two groups of 128 filters 5×5, each over 48 of the 96 channels.
    assert closed_form("conv", {"kernel": (5, 5), "stride": (1, 1), "padding": (2, 2), "dilation": (1, 1),
                                "filters": 256, "groups": 2, "bias": True, "connections": None},
                       [(96, 27, 27)]) == ((256, 27, 27), 256 * 48 * 25 + 256, 27 * 27 * 256 * 48 * 25)
    # VGG-16's first dense layer: 512·7·7 → 4096.
    assert closed_form("dense", {"units": 4096, "bias": True}, [(25_088,)]) == ((4096,), 102_764_544, 102_760_448)
    # GoogLeNet's ceil-mode max pooling: 112 → 56.
    assert closed_form("maxpool", {"kernel": (3, 3), "stride": (2, 2), "padding": (0, 0), "ceil_mode": True},
                       [(64, 112, 112)])[0] == (64, 56, 56)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnets_have_the_papers_parameter_counts(depth, summaries):
    n = (depth - 2) // 6
    params, macs = resnet_cifar(n)
    for name in (f"resnet{depth}", f"plain{depth}"):
        if name not in EXPECTED:  # no plain110 (Figure 6 leaves it out)
            continue
        s = get(summaries, name)
        assert (s.total_params, s.trainable_params, s.macs) == (params, params, macs) == \
            (EXPECTED[name][0], EXPECTED[name][1], EXPECTED[name][2])
    # as Table 6 prints it: 0.27M … 0.85M to two decimals, 1.7M to one
    printed = TABLE6[f"resnet{depth}"]
    assert f"{params / 1e6:.{len(printed.split('.')[1])}f}" == printed
    # option A: no shortcut has a parameter, and the network has 6n + 2 weighted layers
    s = get(summaries, f"resnet{depth}")
    shortcuts = [r for r in s.layers if r.type == "shortcut_pad"]
    assert len(shortcuts) == 2 and all(r.params == 0 and r.macs == 0 for r in shortcuts)
    assert sum(r.type in ("conv", "dense") for r in s.layers) == 6 * n + 2
    assert sum(r.type == "add" for r in s.layers) == 3 * n


def test_cifar_resnet_shortcuts_subsample_and_pad(summaries):
    s = get(summaries, "resnet20")
    rows = {r.name: r for r in s.layers}
    assert rows["layer2.down.shortcut"].output_shape == (32, 16, 16)
    assert rows["layer3.down.shortcut"].output_shape == (64, 8, 8)
    assert [r.name for r in s.rows(0)] == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
    assert s.group_row("layer2").type == "basic_down, basic ×2"
    plain = get(summaries, "plain20")
    assert not any(r.type in ("add", "shortcut_pad") for r in plain.layers)
    # the same layers with the same names, but for the shortcuts
    assert {r.name: r.params for r in plain.layers if r.params} == {r.name: r.params for r in s.layers if r.params}


def test_cifar_models_take_32x32_images_and_have_10_classes(summaries):
    for name in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain20", "plain32",
                 "plain44", "plain56", "vgg11-bn", "vgg16-bn", "googlenet-cifar", "alexnet-cifar"):
        m = spec.load(name)
        assert m.input == (3, 32, 32) and m.classes == 10, name
        assert get(summaries, name).output_shape == (10,), name


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_totals_agree_with_torchvisions_published_figures(name, summaries):
    params, gflops = PUBLISHED[name]
    s = get(summaries, name, aux=False)
    assert s.total_params == params
    assert round(s.macs / 1e9, 2) == gflops


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_of_every_builtin_model(name, summaries):
    total, trainable, macs = EXPECTED[name]
    s = get(summaries, name)
    assert s.total_params == total
    assert s.trainable_params == trainable
    assert s.non_trainable_params == total - trainable
    assert s.macs == macs
    # the rows add up to the totals, whatever the folding
    for depth in (None, 0, 1):
        rows = s.rows(depth)
        assert sum(r.params for r in rows) == total
        assert sum(r.macs for r in rows) == macs


def test_googlenet_with_and_without_auxiliary_heads(summaries):
    with_aux = get(summaries, "googlenet")
    without = get(summaries, "googlenet", aux=False)
    assert with_aux.total_params == 13_004_888
    assert without.total_params == without.trainable_params == 6_624_904
    assert without.macs == 1_498_376_192
    assert abs(without.macs - 1.50e9) <= 0.01 * 1.50e9
    assert set(with_aux.aux_outputs) == {"aux1.fc2", "aux2.fc2"} and without.aux_outputs == {}
    assert with_aux.aux_params == 13_004_888 - 6_624_904
    assert not any(r.name.startswith("aux") for r in without.layers)
    assert all(r.aux for r in with_aux.layers if r.name.startswith("aux"))


def test_lenet5_1998_is_the_papers_network(summaries):
    s = get(summaries, "lenet5-1998")
    params = {r.name: r.params for r in s.layers}
    assert params["c1"] == 156 and params["s2"] == 12 and params["c3"] == 1516
    assert params["s4"] == 32 and params["c5"] == 48_120 and params["f6"] == 10_164
    assert params["output"] == 840 and not s.layers[-1].trainable


def test_batchnorm_running_statistics_are_not_parameters(summaries):
    s = get(summaries, "resnet18")
    # running mean and variance: as many numbers as each batch norm's scale and shift
    assert s.buffers == sum(r.params for r in s.layers if r.type == "batchnorm") == 9_600


def test_models_lists_every_builtin_model():
    infos = {i.name: i for i in builtin_models()}
    assert set(EXPECTED) <= set(infos)
    assert set(infos) == set(spec.builtin_names())
    for name, (total, trainable, macs) in EXPECTED.items():
        i = infos[name]
        assert (i.params, i.trainable_params, i.macs) == (total, trainable, macs)
    for i in infos.values():
        assert i.description and "\n" not in i.description
        assert i.input


def test_every_builtin_file_documents_its_reference():
    for name in spec.builtin_names():
        path = spec.resolve(name)
        text = path.read_text(encoding="utf-8")
        assert text.startswith("#"), f"{name}: starts without a comment on what its counts follow"
        m = spec.load(name)
        assert m.description and m.reference and m.classes, name


# --- memory ------------------------------------------------------------------------------

def test_memory_is_float32_and_scales_with_the_batch(summaries):
    one = get(summaries, "lenet5")
    eight = get(summaries, "lenet5", batch=8)
    assert one.param_bytes == 61_706 * 4
    outputs = sum(math.prod(r.output_shape) for r in one.layers)
    assert one.activation_bytes == 2 * outputs * 4
    assert eight.activation_bytes == 8 * one.activation_bytes
    assert eight.input_bytes == 8 * 28 * 28 * 4
    with pytest.raises(UsageError):
        summarize("lenet5", batch=0)


# --- depth ------------------------------------------------------------------------------

def test_depth_folds_blocks(summaries):
    s = get(summaries, "resnet18")
    top = s.rows(0)
    assert [r.name for r in top] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                     "layer4", "avgpool", "fc"]
    layer1 = top[4]
    assert layer1.type == "basic ×2" and layer1.output_shape == (64, 56, 56)
    assert layer1.params == 2 * 73_984 and layer1.folded == 14
    assert top[5].type == "basic_down, basic" and top[7].output_shape == (512, 7, 7)
    one = [r.name for r in s.rows(1)]
    assert one[4:6] == ["layer1.0", "layer1.1"] and "layer2.0" in one and "layer2" not in one
    assert s.rows(1)[4].type == "basic"
    every = s.rows(None)
    assert len(every) == len(s.layers) == len(s.rows(5))
    assert "layer2.0.downsample.0" in [r.name for r in every]
    with pytest.raises(UsageError):
        s.rows(-1)


def test_depth_folds_inception_branches(summaries):
    s = get(summaries, "googlenet")
    top = {r.name: r for r in s.rows(0)}
    assert top["inception3a"].type == "inception" and top["inception3a"].output_shape == (256, 28, 28)
    assert top["aux1"].type == "inception_aux" and top["aux1"].aux
    assert top["conv1"].type == "basic_conv"
    one = {r.name: r for r in s.rows(1)}
    assert one["inception3a.branch2"].type == "basic_conv ×2"
    assert one["inception3a.branch4"].type == "maxpool, basic_conv"
    assert one["inception3a.branch3"].output_shape == (32, 28, 28)
    two = [r.name for r in s.rows(2)]
    assert "inception3a.branch2.1" in two and "inception3a.branch2.1.conv" not in two


def test_rendered_table_shows_group_headers_when_unfolded(summaries):
    text = render_text(get(summaries, "resnet18"), depth=1)
    lines = text.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["layer1"])
    assert "basic ×2" in header and "73,984" not in header
    assert any(line.strip().startswith("layer1.0") and "73,984" in line for line in lines)


# --- other input sizes ------------------------------------------------------------------------

def test_input_changes_shapes_and_macs(summaries):
    base = get(summaries, "resnet18")
    small = get(summaries, "resnet18", input_size="3x64x64")
    shapes = {r.name: r.output_shape for r in small.layers}
    assert small.input == (3, 64, 64) and small.model_input == (3, 224, 224)
    assert shapes["conv1"] == (64, 32, 32) and shapes["layer4.1.relu2"] == (512, 2, 2)
    assert small.total_params == base.total_params
    assert small.macs < base.macs / 10
    assert "3×64×64" in render_text(small, depth=0)


def test_adaptive_pooling_keeps_vgg_and_alexnet_working_at_other_sizes():
    vgg = summarize("vgg16", input_size="3x32x32")
    assert vgg.total_params == 138_357_544 and vgg.macs < 15.47e9
    assert summarize("alexnet", input_size="3x256x256").total_params == 61_100_840


def test_too_small_input_names_the_layer():
    with pytest.raises(ShapeError) as err:
        summarize("vgg16", input_size="3x16x16")
    assert "'pool5'" in str(err.value) and "3×16×16" in str(err.value)
    with pytest.raises(ShapeError) as err:
        summarize("alexnet", input_size="3x32x32")
    assert "alexnet.yaml" in str(err.value)


def test_input_that_would_change_the_weights_names_the_layer():
    # LeNet-5 has no adaptive pooling: another size changes what c5 receives
    with pytest.raises(ShapeError) as err:
        summarize("lenet5", input_size="1x32x32")
    assert "'c5'" in str(err.value) and "576" in str(err.value) and "400" in str(err.value)
    # a different number of channels changes the first convolution's weights
    with pytest.raises(ShapeError) as err:
        summarize("resnet18", input_size="1x224x224")
    assert "'conv1'" in str(err.value)
    with pytest.raises(ShapeError) as err:
        summarize("lenet5", input_size="784")
    assert "'c1'" in str(err.value)


def test_malformed_input_size_is_a_usage_error():
    with pytest.raises(UsageError) as err:
        summarize("lenet5", input_size="28 by 28")
    assert "--input" in str(err.value)


# --- output formats ----------------------------------------------------------------------

@pytest.mark.parametrize("depth", [None, 0])
def test_json_contract(depth, summaries):
    s = get(summaries, "googlenet")
    doc = json.loads(render_text(s, "json", depth))
    for key, kind in (("model", str), ("input", list), ("total_params", int), ("trainable_params", int),
                      ("non_trainable_params", int), ("macs", int), ("layers", list)):
        assert isinstance(doc[key], kind), key
    assert doc["model"] == "googlenet" and doc["input"] == [3, 224, 224]
    assert doc["total_params"] == 13_004_888 and doc["non_trainable_params"] == 0
    assert doc["macs"] == 1_506_748_416
    for layer in doc["layers"]:
        assert set(layer) == {"name", "type", "output_shape", "params", "macs"}
        assert isinstance(layer["name"], str) and isinstance(layer["type"], str)
        assert isinstance(layer["params"], int) and isinstance(layer["macs"], int)
        assert all(isinstance(d, int) for d in layer["output_shape"])
    assert sum(layer["params"] for layer in doc["layers"]) == doc["total_params"]
    names = [layer["name"] for layer in doc["layers"]]
    assert ("inception3a" in names) == (depth == 0)
    assert doc["layers"][0]["type"] == ("basic_conv" if depth == 0 else "conv")


def test_markdown(summaries):
    text = render_text(get(summaries, "lenet5-1998"), "markdown")
    assert "| Layer | Type | Output shape | Params | MACs |" in text
    assert "| `c3` | conv 5×5, sparse 60/96 | 16×10×10 | 1,516 | 150,000 |" in text
    assert "| Trainable params | 60,000 |" in text and "| Non-trainable params | 840 |" in text


def test_unknown_format_is_a_usage_error(summaries):
    with pytest.raises(UsageError):
        render_text(get(summaries, "lenet5"), "yaml")


def test_models_table_and_json():
    infos = builtin_models()
    buf = io.StringIO()
    render.show_models(infos, "json", Console(file=buf, width=100, color_system=None))
    doc = json.loads(buf.getvalue())
    assert {d["name"]: d["params"] for d in doc}["vgg16"] == 138_357_544
    buf = io.StringIO()
    render.show_models(infos, "table", Console(file=buf, width=120, color_system=None))
    text = buf.getvalue()
    for name, (total, *_rest) in EXPECTED.items():
        assert name in text and f"{total:,}" in text
    # which models take published weights, from their files' weights: sections
    weights = {d["name"]: d["weights"] for d in doc}
    assert weights["resnet50"] == ["imagenet"] and weights["lenet5"] == [] and weights["vgg16-bn"] == []
    shown = " ".join(text.split())
    assert ("--weights imagenet (published weights): "
            + ", ".join(sorted(n for n, w in weights.items() if "imagenet" in w))) in shown


# --- golden files -------------------------------------------------------------------------

def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"


# Snapshots of the reviewed tables, not independent truth (the counts in them are checked above);
# `pytest --update-golden` regenerates them (see tests/conftest.py).
@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_golden_table(name, summaries, golden):
    golden(f"summarize-{name}.txt", _normalise(render_text(get(summaries, name), "table", None, width=100)))


# --- the command line -------------------------------------------------------------------------

runner = CliRunner()


def test_cli_summarize():
    result = runner.invoke(app, ["summarize", "lenet5"])
    assert result.exit_code == 0, result.output
    assert "61,706" in result.output and "416,520" in result.output and "c3" in result.output


def test_cli_summarize_json_with_input_and_depth():
    result = runner.invoke(app, ["summarize", "resnet18", "--input", "3x64x64", "--depth", "0",
                                 "--format", "json", "--batch", "4"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["input"] == [3, 64, 64] and doc["total_params"] == 11_689_512
    assert [layer["name"] for layer in doc["layers"]][4] == "layer1"


def test_cli_no_aux_and_markdown():
    result = runner.invoke(app, ["summarize", "googlenet", "--no-aux", "--format", "markdown", "--depth", "0"])
    assert result.exit_code == 0, result.output
    assert "6,624,904" in result.output and "aux1" not in result.output


def test_cli_models():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "vgg16" in result.output and "138,357,544" in result.output


def test_cli_unknown_model_exits_2_with_a_message(capsys):
    result = runner.invoke(app, ["summarize", "vgg61"])
    assert isinstance(result.exception, SpecError) and result.exception.exit_code == 2
    assert "unknown model 'vgg61'" in str(result.exception)
    # the real entry point turns it into exit status 2 and a one-line message
    with pytest.raises(SystemExit) as exit_:
        main(["summarize", "vgg61"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'vgg61' — did you mean 'vgg16'?" in err and "Traceback" not in err


def test_cli_too_small_input_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["summarize", "vgg16", "--input", "3x16x16"])
    assert exit_.value.code == 2
    assert "pool5" in capsys.readouterr().err


def test_summarize_imports_no_engine():
    # a summary is shape inference only: no Numba, no layers, no kernels
    assert isinstance(summarize("lenet5"), Summary)
    code = ("import sys\nfrom cnncli.cli import main\n"
            "try:\n    main(['summarize', 'googlenet'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('numba', 'cnncli.engine.layers', 'cnncli.engine.conv', 'cnncli.engine.network') if m in sys.modules]\n"
            "print('LOADED', bad) if bad else print('CLEAN')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("CLEAN"), out[-300:]


def test_errors_are_cnn_errors():
    for exc in (ShapeError, SpecError, UsageError):
        assert issubclass(exc, CnnError)


@pytest.mark.parametrize("model,batch", [("lenet5", 8), ("resnet20", 3)])
def test_paths_are_the_strategies_a_fast_network_runs(model, batch, monkeypatch):
    """--paths names, for each conv layer, the strategies that a fast network of the model runs on a batch of
    that size: the picks a forward and a backward pass make, spied on, in order (fused chains pick once, for
    both passes)."""
    import numpy as np

    from cnncli.engine import conv, losses
    from cnncli.engine.network import Network

    s = summarize(model, batch=batch, paths=True)
    assert s.paths.parts == (batch,)  # fewer than MIN_PART samples a part: the batch runs whole
    g = graph.build(spec.load(model))
    net = Network(g, "float32", seed=1, fast=True, workers=1)
    picks: list[tuple[str, str]] = []
    real = conv.pick

    def spy(call, pass_=conv.FORWARD):
        strategy = real(call, pass_)
        picks.append((pass_, strategy.name))
        return strategy

    monkeypatch.setattr(conv, "pick", spy)
    x = np.random.default_rng(0).standard_normal((batch, *g.input_shape)).astype(np.float32)
    net.loss_and_backward(x, np.arange(batch) % 10, losses.get("cross_entropy"))
    convs = [n.name for n in g.nodes if n.kind == "conv"]
    forward = [name for pass_, name in picks if pass_ == conv.FORWARD]
    backward = [name for pass_, name in picks if pass_ == conv.BACKWARD]
    assert forward == [s.paths.layers[c].forward for c in convs]
    assert backward[::-1] == [s.paths.layers[c].backward for c in convs if not s.paths.layers[c].chain]
    assert len(set(forward)) > 1 or model == "lenet5"


def test_cli_summarize_paths_in_the_table_and_json():
    result = runner.invoke(app, ["summarize", "lenet5", "--paths", "--batch", "4"])
    assert result.exit_code == 0, result.output
    assert "Strategy" in result.output and "+ tanh1, s2" in result.output
    data = json.loads(runner.invoke(app, ["summarize", "lenet5", "--paths", "--format", "json"]).output)
    c1 = next(layer for layer in data["layers"] if layer["name"] == "c1")
    assert c1["strategy"]["fused_with"] == ["tanh1", "s2"] and c1["strategy"]["forward"] in ("lanes", "fused")
    assert data["paths"]["dtype"] == "float32" and data["paths"]["parts"] == [1]
    plain = json.loads(runner.invoke(app, ["summarize", "lenet5", "--format", "json"]).output)
    assert "paths" not in plain and all("strategy" not in layer for layer in plain["layers"])
