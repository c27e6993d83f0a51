"""The built-in CIFAR-10 networks run: a forward and backward pass through the engine.

Their counts are checked in tests/test_summary.py; here each one takes a batch of two
random 3×32×32 images in float64 through the plain network (every layer on its
plain path), and the fast network gives ResNet-20 the same loss and gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine import losses
from cnncli.engine.network import Network
from cnncli.model import graph, spec

CIFAR_MODELS = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                "plain20", "plain32", "plain44", "plain56",
                "vgg11-bn", "vgg16-bn", "googlenet-cifar", "alexnet-cifar"]


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 3, 32, 32)), np.array([3, 7])


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_train_section_names_cifar10_and_the_model_fits_it(name):
    from cnncli import data
    from cnncli.records import inputs

    m = spec.load(name)
    assert m.train_setting("dataset") == "cifar10"
    assert m.train_setting("crop_padding") == 4 and m.train_setting("flip") is True  # the usual CIFAR recipe
    g, info = graph.build(m), data.DATASETS["cifar10"]
    assert tuple(g.input_shape) == info.image_shape  # 3×32×32 images, taken as they are
    inputs.check_outputs(g[g.output], len(info.classes), info.title, name)  # 10 classes


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_forward_and_backward_on_two_images(name):
    g = graph.build(spec.load(name))
    net = Network(g, "float64", seed=0)
    x, target = _batch()
    value, out = net.loss_and_backward(x, target, losses.get("cross_entropy"), train=True)
    assert np.isfinite(value) and out.shape == (2, 10)  # the logits; the loss is softmax cross-entropy
    assert value == pytest.approx(losses.softmax_cross_entropy(out, target)[0], rel=1e-12)
    assert net.input_grad.shape == x.shape and np.isfinite(net.input_grad).all()
    assert set(net.grads) == set(net.trainable())
    for key, grad in net.grads.items():
        assert grad.shape == net.params[key].shape, key
        assert np.isfinite(grad).all() and np.abs(grad).sum() > 0, key
    # inference on the running statistics, and the same output with no gradient kept
    y = net.forward(x, train=False)
    assert y.shape == (2, 10) and np.isfinite(y).all()


def test_shortcut_gradient_reaches_the_stem_of_resnet20():
    """Option A passes the gradient on: through layer2.down's shortcut, dx is dy's first channels, subsampled."""
    g = graph.build(spec.load("resnet20"))
    net = Network(g, "float64", seed=0)
    x, target = _batch(1)
    net.loss_and_backward(x, target, losses.get("cross_entropy"), train=True)
    layer = net.layers["layer2.down.shortcut"]
    dy = np.random.default_rng(2).standard_normal((2, 32, 16, 16))
    (dx,) = layer.backward(dy)
    assert dx.shape == (2, 16, 32, 32)
    assert np.array_equal(dx[:, :, ::2, ::2], dy[:, :16]) and not dx[:, :, 1::2].any() and not dx[:, :, :, 1::2].any()


def test_fast_network_gives_resnet20_the_same_loss_and_gradients():
    g = graph.build(spec.load("resnet20"))
    plain = Network(g, "float64", seed=4)
    fast = Network(g, "float64", seed=5, fast=True)
    for key, p in plain.params.items():  # the same weights, whatever each drew
        fast.params[key][...] = p
    for key, b in plain.buffers.items():
        fast.buffers[key][...] = b
    x, target = _batch(3)
    loss = losses.get("cross_entropy")
    lp, op = plain.loss_and_backward(x, target, loss, train=True)
    lf, of = fast.loss_and_backward(x, target, loss, train=True)
    assert lf == pytest.approx(lp, rel=1e-10) and np.allclose(of, op, rtol=1e-10)
    # What the fast network does differently here: its first conv computes no input gradient. Nothing is
    # fused (every conv feeds a batch norm) and a batch of 3 is not split (parts have at least MIN_PART samples).
    assert fast.input_grad is None and not fast.fused_head and fast._split(3) is None
    # Every ReLU runs inside the batch norm or residual sum before it: 19 of them (9 blocks × 2 + the stem).
    assert len(fast.folded) == sum(n.kind == "relu" for n in g.nodes) == 19
    assert {g[s].kind for s in fast.folded.values()} == {"batchnorm", "add"}
    for key, grad in plain.grads.items():
        assert np.allclose(fast.grads[key], grad, rtol=1e-8, atol=1e-12), key


def test_an_inference_pass_keeps_only_what_it_returns():
    g = graph.build(spec.load("resnet20"))
    plain = Network(g, "float64", seed=4)
    fast = Network(g, "float64", seed=4, fast=True, workers=1)
    x = np.concatenate([_batch(3)[0], _batch(4)[0][:1]])  # three samples, predicted in batches of two
    want = plain.forward(x)  # a plain network keeps every value (backprop-trace shows them)
    got = fast.predict(x, 2, source="layer3.1.relu2")
    assert np.allclose(got, plain.values["layer3.1.relu2"], rtol=1e-12)
    assert set(fast.values) == {g.output, "layer3.1.relu2"}
    assert np.allclose(fast.values[g.output], want[2:], rtol=1e-12)  # the last batch: sample 2 alone
    for layer in fast.layers.values():  # nothing kept for a backward pass
        assert all(getattr(layer, name, None) is None for name in layer.cached), layer.node.name
    assert len(plain.values) == len(g.nodes) + 1


def test_resnet20_has_the_measured_fashion_mnist_recipe():
    """models/resnet20.yaml's Fashion-MNIST entry: the recipe that reached 94.50 % (benchmarks/README.md)."""
    from cnncli.commands import training

    settings = training.resolve(spec.load("resnet20"), {"dataset": "fashion-mnist"})
    assert (settings["epochs"], settings["weight_decay"], settings["lr"], settings["schedule"]) == \
        (30, 0.0005, 0.1, "cosine")
    assert (settings["crop_padding"], settings["flip"], settings["batch_size"]) == (4, True, 128)
    assert training.resolve(spec.load("resnet20"), {})["epochs"] == 182  # CIFAR-10 keeps the paper's recipe


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
@pytest.mark.parametrize("dataset", [None, "cifar10", "fashion-mnist"])
def test_plain_nets_train_as_their_residual_twins(depth, dataset):
    """He et al. train plain and residual nets alike, so the depth experiment compares networks, not recipes."""
    from cnncli.commands import training

    overrides = {} if dataset is None else {"dataset": dataset}
    assert training.resolve(spec.load(f"plain{depth}"), overrides) == \
        training.resolve(spec.load(f"resnet{depth}"), overrides)
