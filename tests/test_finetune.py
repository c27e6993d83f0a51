"""Heads sized to a dataset's classes, fine-tuning from weights (``train --weights``) and ``--freeze``.

Image folders of a few solid-ish colours (tiny PNGs written with Pillow) give datasets of 3 and 4 classes;
a small batch-norm network and ResNet-20 train on them for an epoch. Every command that loads the weights
goes through :mod:`cnncli.records.trained`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import colour_folder, run_main

from cnncli.commands import compare, training
from cnncli.engine import losses, processes
from cnncli.engine.network import Network
from cnncli.errors import CheckpointError, ModelMismatch, UsageError
from cnncli.model import head, spec
from cnncli.model.graph import build
from cnncli.records import checkpoint, freeze, trained

PIL = pytest.importorskip("PIL.Image")

SMALL = """\
name: small
input: [3, 8, 8]
classes: 10
train: {dataset: image-folder, optimizer: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.01, batch_size: 8,
        epochs: 1, val_size: 0}
layers:
  - conv: {name: conv1, filters: 4, kernel: 3, padding: 1, bias: false}
  - batchnorm: {name: bn1}
  - relu
  - conv: {name: conv2, filters: 4, kernel: 3, padding: 1, bias: false}
  - batchnorm: {name: bn2}
  - relu
  - global_avgpool: {name: pool}
  - dense: {name: fc, units: 10}
"""

COLOURS = {"blue": (0, 0, 255), "green": (0, 200, 0), "red": (230, 0, 0), "yellow": (230, 230, 0)}


def _folder(root, names):
    """12 noisy 10×10 pictures of each named colour."""
    return colour_folder(root, {name: COLOURS[name] for name in names}, per_class=12, size=(10, 10), noise=40,
                         seed=len(names))


@pytest.fixture(scope="module", autouse=True)
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        mp.setenv("CNNCLI_OFFLINE", "1")
        mp.setenv("COLUMNS", "400")  # header lines unwrapped
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The small model's file, a 3-class and a 4-class folder."""
    root = tmp_path_factory.mktemp("finetune")
    model = root / "small.yaml"
    model.write_text(SMALL)
    return str(model), _folder(root / "three", ["blue", "green", "red"]), \
        _folder(root / "four", ["blue", "green", "red", "yellow"])


def train(model, folder, out, **options) -> training.RunResult:
    config = training.configure(model, {}, data_dir=folder, out=out, **options)
    return training.train(config, options.pop("reporter", None))


@pytest.fixture(scope="module")
def four(files, tmp_path_factory):
    """The small model trained on the 4-class folder: its head sized from 10 to 4 units."""
    model, _, folder4 = files
    result = train(model, folder4, tmp_path_factory.mktemp("four") / "run")
    assert result.status == "completed"
    return result


def weights(path) -> dict[str, np.ndarray]:
    return checkpoint.load(path).state


# --------------------------------------------------------------------------- the head

def test_the_head_is_the_dense_layer_making_each_output_and_resize_changes_its_units_alone():
    resnet = spec.load("resnet20")
    sized = head.resize(resnet, 3)
    assert sized.changes == (head.HeadChange("fc", 10, 3),)
    assert sized.spec.node("fc").options["units"] == 3 and sized.spec.classes == 3
    assert resnet.node("fc").options["units"] == 10  # a new spec; the model's own is unchanged
    assert [n.options for n in sized.spec.nodes[:-1]] == [n.options for n in resnet.nodes[:-1]]
    assert build(sized.spec).output_shape == (3,) and build(sized.spec).param_shapes()["fc.weight"] == (64, 3)
    assert sized.spec.fingerprint() != resnet.fingerprint()
    assert head.resize(resnet, 10).spec is resnet and head.resize(resnet, 10).changes == ()
    # GoogLeNet's auxiliary classifiers are sized with its main one.
    google = head.resize(spec.load("googlenet"), 5)
    assert [(c.layer, c.before, c.after, c.aux) for c in google.changes] == \
        [("fc", 1000, 5, False), ("aux1.fc2", 1000, 5, True), ("aux2.fc2", 1000, 5, True)]
    assert all(shape == (5,) for shape in
               (build(google.spec)[n].out_shape for n in ("fc", "aux1.fc2", "aux2.fc2")))
    # Through the layers after it that learn nothing and keep the shape: slide-mlp's softmax; but its dense
    # layers' weights are written out in the file, so it has no head to resize.
    assert head.heads(spec.load("slide-mlp")) == ()
    softmax = spec.parse("input: [4]\nlayers:\n  - dense: {units: 6}\n  - dropout: {rate: 0.1}\n  - softmax\n")
    assert [h.name for h in head.heads(softmax)] == ["dense1"]
    no_dense = spec.parse("input: [1, 8, 8]\nlayers:\n  - conv: {filters: 10, kernel: 3}\n  - global_avgpool\n")
    assert head.heads(no_dense) == () and head.resize(no_dense, 3).spec is no_dense


def test_a_model_whose_output_is_no_dense_layer_still_refuses_other_classes(files, tmp_path, capsys):
    _, folder3, _ = files
    model = tmp_path / "convout.yaml"
    model.write_text("input: [3, 8, 8]\ntrain: {dataset: image-folder}\nlayers:\n  - conv: {filters: 10, kernel: 3}\n"
                     "  - global_avgpool\n")
    code, _, err = run_main(["train", str(model), "--data-dir", str(folder3), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "outputs 10, but image folder three has 3 classes" in err


def test_resnet20_trains_on_a_3_class_folder_as_named_and_every_command_loads_the_result(files, tmp_path, capsys):
    _, folder3, _ = files
    run = tmp_path / "run"
    code, out, err = run_main(["train", "resnet20", "--dataset", "image-folder", "--data-dir", str(folder3),
                               "--epochs", "1", "--batch-size", "8", "--out", str(run)], capsys)
    assert code == 0, err
    assert "head: fc: 10 → 3 units for the 3 classes of image folder three" in out
    saved = checkpoint.load(run / "best.npz")
    assert saved.classes == 3 and saved.state["fc.weight"].shape == (64, 3)
    assert yaml.safe_load((run / "config.yaml").read_text())["classes"] == 3
    # The fingerprint is the sized network's: what the model check compares against.
    sized = head.resize(spec.load("resnet20"), 3).spec
    assert saved.meta[checkpoint.NETWORK] == sized.fingerprint() != spec.load("resnet20").fingerprint()

    weights_ = ["--weights", str(run / "best.npz")]
    code, out, err = run_main(["eval", "resnet20", *weights_, "--format", "json"], capsys)
    assert code == 0, err
    assert len(yaml.safe_load(out)["per_class"]) == 3
    code, out, err = run_main(["predict", "resnet20", *weights_, str(folder3 / "red" / "0.png"), "--format", "json"],
                              capsys)
    assert code == 0, err
    assert len(yaml.safe_load(out)["predictions"][0]["top"]) == 3
    code, out, err = run_main(["features", "resnet20", *weights_, "--sample", "0", "--layer", "conv1",
                               "--max-maps", "1", "--format", "json"], capsys)
    assert code == 0, err
    if importlib.util.find_spec("torch") is not None:  # the torch extra
        code, out, err = run_main(["export", "resnet20", *weights_, "--to", "torch", "-o",
                                   str(tmp_path / "model.py")], capsys)
        assert code == 0, err
        assert "outputs [batch, 3]" in out and (tmp_path / "model.pt").is_file()
    # On data of other classes the weights are refused, naming both counts.
    code, _, err = run_main(["eval", "resnet20", *weights_, "--dataset", "cifar10"], capsys)
    assert code == 2 and "was trained for 3 classes, but CIFAR-10 has 10" in err


def test_the_loader_sizes_the_network_as_trained_and_checks_the_model_against_it(files, four, tmp_path):
    model, _, folder4 = files
    loaded = trained.load(model, four.best_path, data=None)
    assert loaded.graph.output_shape == (4,) and loaded.source is None and loaded.plan is None
    assert loaded.network.params["fc.weight"].shape == (4, 4)
    loaded = trained.load(model, four.best_path)  # the run's folder, as recorded
    assert loaded.source.classes == ("blue", "green", "red", "yellow") and loaded.plan is not None
    # backprop-trace --weights rebuilds the same network (auxiliary heads and all values kept).
    traced = trained.load(model, four.best_path, data=None, aux=True, fast=False, dtype="float64")
    assert traced.network.dtype == np.float64
    np.testing.assert_array_equal(traced.network.params["fc.weight"], four_weights(four)["fc.weight"])
    # Another network of the same names: refused by the model check, which compares sized networks.
    other = tmp_path / "small.yaml"
    other.write_text(SMALL.replace("global_avgpool: {name: pool}", "global_avgpool: {name: pool}\n  - dropout"))
    with pytest.raises(ModelMismatch, match="with other layers or wiring"):
        trained.load(str(other), four.best_path, data=None)


def four_weights(result):
    return weights(result.best_path)


def test_compare_sizes_every_models_head_to_the_dataset(files, tmp_path):
    model, folder3, _ = files
    experiment = compare.plan([model, "lenet5"], {"dataset": "image-folder"}, data_dir=folder3,
                              out=tmp_path / "cmp")
    assert [e.name for e in experiment.entries] == ["small", "lenet5"]


def test_a_state_dict_of_a_sized_run_is_sized_by_its_head_weight_and_commands_say_so(files, four, tmp_path,
                                                                                       capsys):
    """`export --to torch` of the 4-class run writes a state dict, which records no classes; read back, its
    head weight (4 inputs × 4 units) sizes the model file's 10-unit head, and every command names that."""
    torch = pytest.importorskip("torch")
    model, _, folder4 = files
    code, _, err = run_main(["export", model, "--weights", str(four.best_path), "--to", "torch", "-o",
                             str(tmp_path / "m.py")], capsys)
    assert code == 0, err
    pt, data, image = tmp_path / "m.pt", ["--data-dir", str(folder4)], str(folder4 / "red" / "0.png")
    named = "head: fc: 10 → 4 units, from the weights file (it records no classes)"
    code, out, err = run_main(["eval", model, "--weights", str(pt), *data, "--format", "json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["head"] == [{"layer": "fc", "model_file_units": 10, "units": 4}]
    run = json.loads(run_main(["eval", model, "--weights", str(four.best_path), "--format", "json"], capsys)[1])
    assert run["head"] == []  # the run's checkpoint records its classes: nothing was inferred
    assert (record["accuracy"], record["confusion"]) == (run["accuracy"], run["confusion"])  # the same weights
    for command in (["eval", *data], ["predict", *data, image], ["explain", *data, "--image", image, "--method",
                                                                 "saliency"]):
        code, out, err = run_main([command[0], model, "--weights", str(pt), *command[1:]], capsys)
        assert code == 0 and named in out, (command[0], err)
    code, out, err = run_main(["predict", model, "--weights", str(pt), *data, image, "--format", "json"], capsys)
    assert code == 0 and len(json.loads(out)["predictions"][0]["top"]) == 3  # top-3 of the folder's 4 classes
    code, out, err = run_main(["export", model, "--weights", str(pt), "--to", "torch", "-o", str(tmp_path / "n.py")],
                              capsys)
    assert code == 0 and named in out and "outputs [batch, 4]" in out, err  # no data needed
    # Data of other classes, or none, is refused, saying what the file holds and what to give.
    code, _, err = run_main(["eval", model, "--weights", str(pt), "--dataset", "cifar10"], capsys)
    assert code == 2 and (f"{pt} records no classes, and its head (fc) has 4 units, so it was trained for 4 classes, "
                          "but CIFAR-10 has 10: give the dataset it was trained on") in err
    code, _, err = run_main(["predict", model, "--weights", str(pt), image], capsys)
    assert code == 2 and "records no classes or image statistics" in err and "--data-dir DIR" in err
    # A head weight of another number of inputs fits no number of classes.
    state = torch.load(pt, weights_only=True)
    state["fc.weight"] = torch.zeros(4, 5)  # PyTorch's (units, inputs): 5 inputs where fc takes 4
    torch.save(state, tmp_path / "bad.pt")
    code, _, err = run_main(["eval", model, "--weights", str(tmp_path / "bad.pt"), *data], capsys)
    assert code == 2 and "Traceback" not in err
    assert (f"{tmp_path / 'bad.pt'}: its head weight 'fc.weight' has shape 5×4 (inputs × units), which fits no "
            "number of classes: fc takes 4 inputs in this model, so its weight is 4×N for N classes") in err


def test_the_units_held_are_read_from_every_head_the_weights_hold():
    aux = spec.parse(AUX)
    shapes = build(aux).param_shapes()  # fc and auxfc: 4 inputs, 10 units
    zeros = {"fc.weight": np.zeros((4, 3)), "auxfc.weight": np.zeros((4, 3))}
    assert head.units_held(aux, zeros, shapes, "w.pt") == 3
    assert head.units_held(aux, {"fc.weight": zeros["fc.weight"]}, shapes, "w.pt") == 3  # the inference network's
    assert head.units_held(aux, {"conv1.weight": np.zeros((4, 3, 3, 3))}, shapes, "w.pt") is None  # a backbone's
    with pytest.raises(CheckpointError, match=r"w.pt: its heads have different numbers of units \(fc 3, auxfc 5\)"):
        head.units_held(aux, {**zeros, "auxfc.weight": np.zeros((4, 5))}, shapes, "w.pt")
    with pytest.raises(CheckpointError, match="'auxfc.weight' has shape 4 \\(inputs × units\\), which fits no"):
        head.units_held(aux, {**zeros, "auxfc.weight": np.zeros(4)}, shapes, "w.pt")


# --------------------------------------------------------------------------- fine-tuning

def test_fine_tune_from_weights_with_another_head_replaces_it_and_loads_the_rest(files, four, tmp_path, capsys):
    model, folder3, _ = files
    run = tmp_path / "ft"
    code, out, err = run_main(["train", model, "--data-dir", str(folder3), "--weights", str(four.best_path),
                               "--freeze", "backbone", "--out", str(run)], capsys)
    assert code == 0, err
    assert "head: fc: 10 → 3 units for the 3 classes of image folder three" in out
    assert f"weights: {four.best_path} (fine-tuning: a new run from epoch 0" in out
    assert "fc not taken from them (4 units there): a fresh one" in out
    assert "frozen: backbone (up to pool), 268 parameters fixed; 15 train; batch norm there uses its running " \
        "statistics (2 layers)" in out, out
    start, end = weights(four.best_path), checkpoint.load(run / "last.npz")
    # A new run: epoch 1 of its own, its optimizer's steps its own (not the 4-class run's).
    assert end.epoch == 1 and int(end.state["optim.steps"]) == end.meta["step"] == 4
    assert end.config["weights"] == str(four.best_path) and end.config["freeze"] == "backbone"
    for key in ("conv1.weight", "bn1.weight", "bn1.running_mean", "conv2.weight", "bn2.running_var"):
        np.testing.assert_array_equal(end.state[key], start[key], err_msg=key)  # loaded, then frozen
    assert end.state["fc.weight"].shape == (4, 3)
    # Without --freeze everything learns from the loaded weights.
    code, out, err = run_main(["train", model, "--data-dir", str(folder3), "--weights", str(four.best_path),
                               "--out", str(tmp_path / "all")], capsys)
    assert code == 0, err
    assert not np.array_equal(weights(tmp_path / "all" / "last.npz")["conv1.weight"], start["conv1.weight"])


AUX = """\
name: withaux
input: [3, 8, 8]
classes: 10
train: {dataset: image-folder, optimizer: sgd, lr: 0.05, batch_size: 8, epochs: 1, val_size: 0}
layers:
  - conv: {name: conv1, filters: 4, kernel: 3, padding: 1}
  - relu: {name: relu1}
  - global_avgpool: {name: auxpool, input: relu1}
  - dense: {name: auxfc, units: 10, aux: 0.3}
  - global_avgpool: {name: pool, input: relu1}
  - dense: {name: fc, units: 10}
"""


def test_auxiliary_heads_are_sized_too_and_heads_the_weights_lack_start_fresh(files, tmp_path, capsys):
    _, folder3, _ = files
    model = tmp_path / "withaux.yaml"
    model.write_text(AUX)
    # Weights alone of the inference network (no auxiliary head) without its head: a backbone's.
    backbone = Network(build(spec.parse(AUX), aux=False), "float32", seed=5).state_dict()
    backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
    checkpoint.save(tmp_path / "backbone.npz", backbone, {}, {})
    code, out, err = run_main(["train", str(model), "--data-dir", str(folder3), "--weights",
                               str(tmp_path / "backbone.npz"), "--freeze", "relu1", "--out", str(tmp_path / "run")],
                              capsys)
    assert code == 0, err
    assert "head: fc, auxfc: 10 → 3 units for the 3 classes of image folder three" in out
    assert "fc, auxfc not in them: fresh" in out
    end = weights(tmp_path / "run" / "last.npz")
    assert end["auxfc.weight"].shape == (4, 3) and end["fc.weight"].shape == (4, 3)
    np.testing.assert_array_equal(end["conv1.weight"], backbone["conv1.weight"])  # loaded (and frozen)
    code, out, err = run_main(["eval", str(model), "--weights", str(tmp_path / "run" / "last.npz")], capsys)
    assert code == 0, err


def test_freeze_keeps_the_frozen_part_bit_for_bit_and_trains_the_rest(files, four, tmp_path):
    model, _, folder4 = files
    result = train(model, folder4, tmp_path / "run", weights=four.best_path, freeze="bn1")
    start, end = weights(four.best_path), weights(result.last_path)
    frozen = ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var")
    for key in frozen:  # no update, no weight decay, and batch norm's statistics left as they were
        np.testing.assert_array_equal(end[key], start[key], err_msg=key)
    for key in ("conv2.weight", "bn2.weight", "bn2.running_mean", "bn2.running_var", "fc.weight", "fc.bias"):
        assert not np.array_equal(end[key], start[key]), key
    assert not any(k.startswith(("optim.momentum.conv1", "optim.momentum.bn1")) for k in end)


def test_the_torch_engine_freezes_the_same_way(files, four, tmp_path):
    pytest.importorskip("torch")
    model, _, folder4 = files
    result = train(model, folder4, tmp_path / "run", weights=four.best_path, freeze="bn1", engine="torch")
    start, end = weights(four.best_path), weights(result.last_path)
    for key in ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        np.testing.assert_array_equal(end[key], start[key], err_msg=key)
    for key in ("conv2.weight", "bn2.running_mean", "fc.weight"):
        assert not np.array_equal(end[key], start[key]), key


class SignalAt(training.SilentReporter):
    def __init__(self, epoch, batch):
        self.at, self.sent = (epoch, batch), False

    def step(self, p):
        if (p.epoch, p.batch) == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_resuming_a_frozen_fine_tune_equals_the_uninterrupted_run(files, four, tmp_path):
    model, folder3, _ = files
    options = dict(weights=four.best_path, freeze="conv2")
    whole = training.train(training.configure(model, {"epochs": 2}, data_dir=folder3, out=tmp_path / "whole",
                                              **options))
    part = training.train(training.configure(model, {"epochs": 2}, data_dir=folder3, out=tmp_path / "part",
                                             **options), SignalAt(1, 2))
    assert part.status == "interrupted"
    config = training.configure(model, {}, data_dir=folder3, resume=tmp_path / "part" / "last.npz")
    assert (config.weights, config.freeze, config.classes) == (str(four.best_path), "conv2", 3)
    resumed = training.train(config)
    assert resumed.status == "completed"
    a, b = weights(whole.last_path), weights(resumed.last_path)
    assert a.keys() == b.keys()
    for key in a:
        if not key.startswith("meta."):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in whole.history]
    # A resumed run keeps its freeze and cannot take other weights.
    with pytest.raises(UsageError, match="--freeze bn1 differs from the resumed run's conv2"):
        training.configure(model, {}, data_dir=folder3, resume=tmp_path / "part" / "last.npz", freeze="bn1")
    with pytest.raises(UsageError, match="give one of them"):
        training.configure(model, {}, data_dir=folder3, resume=tmp_path / "part" / "last.npz",
                           weights=four.best_path)


def test_an_unknown_layer_to_freeze_and_weights_that_do_not_fit_exit_2(files, four, tmp_path, capsys):
    model, folder3, _ = files
    code, _, err = run_main(["train", model, "--data-dir", str(folder3), "--freeze", "conv3", "--out",
                             str(tmp_path / "a")], capsys)
    assert code == 2 and "--freeze conv3: model 'small' has no layer or block of that name" in err
    assert "did you mean 'conv2', 'conv1'?" in err
    assert not (tmp_path / "a").exists()
    code, _, err = run_main(["train", model, "--data-dir", str(folder3), "--freeze", "fc", "--out",
                             str(tmp_path / "b")], capsys)
    assert code == 2 and "nothing would train" in err
    # Weights alone (no model recorded, so no model check) of a wider second convolution.
    wide = spec.parse(SMALL.replace("name: conv2, filters: 4", "name: conv2, filters: 6"))
    net = Network(build(wide), "float32")
    checkpoint.save(tmp_path / "wide.npz", net.state_dict(), {}, {})
    code, _, err = run_main(["train", model, "--data-dir", str(folder3), "--weights", str(tmp_path / "wide.npz"),
                             "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "'conv2.weight' has shape 6×4×3×3 but the model needs 4×4×3×3" in err


def test_freeze_names_a_layer_or_a_block_and_everything_before_it():
    resnet = spec.load("resnet20")
    names = [n.name for n in resnet.nodes]
    block = freeze.choose(resnet, "layer2")
    assert block.last == "layer2.1.relu2" and block.layers == set(names[:names.index("layer2.1.relu2") + 1])
    assert freeze.choose(resnet, "bn1").layers == {"conv1", "bn1"}
    assert freeze.choose(resnet, "backbone").layers == set(names) - {"fc"}
    google = freeze.choose(spec.load("googlenet"), "backbone")
    assert not {"fc", "aux1.fc2", "aux2.fc2"} & google.layers and "aux1.fc1" in google.layers
    with pytest.raises(UsageError, match="did you mean 'layer3'"):
        freeze.choose(resnet, "layer33")
    # A group of layers by the prefix of their names, as PyTorch names modules: resnet18's layer3.0, layer3.1.
    resnet18 = spec.load("resnet18")
    group = freeze.choose(resnet18, "layer3")
    assert group.last == "layer3.1.relu2" and "layer3.0.conv1" in group.layers and "layer4.0.conv1" not in group.layers


# --------------------------------------------------------------------------- the engine

def _frozen_graph(frozen):
    return build(spec.parse(SMALL), frozen=frozen)


def _batch(n=16):
    rng = np.random.default_rng(3)
    return rng.standard_normal((n, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, n)


def test_the_backward_pass_stops_where_nothing_upstream_learns():
    g = _frozen_graph({"conv1", "bn1"})
    fast = Network(g, "float32", seed=1, fast=True, workers=1)
    full = Network(g, "float32", seed=1, fast=False)
    for net in (fast, full):  # running statistics of their own, which the frozen batch norm uses
        net.buffers["bn1.running_mean"][...] = [0.1, -0.2, 0.3, 0.0]
        net.buffers["bn1.running_var"][...] = [0.5, 2.0, 1.0, 3.0]
    assert fast.learning == {"conv2", "bn2", "relu2", "pool", "fc"}  # relu2 folds into bn2, all downstream
    assert fast.layers["conv2"].need_dx is False
    for name in ("conv1", "bn1", "relu1"):
        fast.layers[name].backward = lambda dy, name=name: pytest.fail(f"{name}'s backward ran")
    x, y = _batch()
    loss = losses.get("cross_entropy")
    before = {k: v.copy() for k, v in fast.buffers.items()}
    fast.loss_and_backward(x, y, loss)
    full.loss_and_backward(x, y, loss)
    assert set(fast.grads) == set(full.grads) == {"conv2.weight", "bn2.weight", "bn2.bias", "fc.weight", "fc.bias"}
    for key in fast.grads:
        np.testing.assert_allclose(fast.grads[key], full.grads[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for key in ("bn1.running_mean", "bn1.running_var"):
        np.testing.assert_array_equal(fast.buffers[key], before[key])
    assert not np.array_equal(fast.buffers["bn2.running_mean"], before["bn2.running_mean"])


def test_a_frozen_batch_norm_reads_its_statistics_in_worker_processes_too(monkeypatch):
    g = _frozen_graph({"conv1", "bn1"})
    x, y = _batch(64)
    loss = losses.get("cross_entropy")

    def grads(in_processes: bool) -> dict[str, np.ndarray]:
        net = Network(g, "float32", seed=1, fast=True, workers=2)
        if net.workers < 2:
            pytest.skip("this process may use one CPU only: a batch is not split")
        net.buffers["bn1.running_mean"][...] = [0.5, -0.5, 1.0, 0.0]
        net.buffers["bn1.running_var"][...] = [0.25, 4.0, 1.0, 9.0]
        if in_processes:
            net.spawn_workers(len(x))
            end = time.monotonic() + 60
            while net.parts.group is None or not net.parts.group.ready():
                assert net.parts.group is not None and time.monotonic() < end, "no worker processes"
                time.sleep(0.05)
        try:
            net.loss_and_backward(x, y, loss)
            return {k: v.copy() for k, v in net.grads.items()}
        finally:
            net.close()

    if not processes.available():
        pytest.skip("worker processes are not used on this platform")
    on_threads, in_processes = grads(False), grads(True)
    for key in on_threads:
        np.testing.assert_array_equal(in_processes[key], on_threads[key], err_msg=key)


def test_an_image_folder_run_resumes_without_data_dir_as_its_continue_line_says(files, four, capsys):
    """The line printed after Ctrl-C is `cnncli train MODEL --resume .../last.npz`: the folder is the run's."""
    model, _, folder4 = files
    config = training.configure(model, {"epochs": 2}, resume=four.run_dir / "last.npz")
    assert config.data_dir is not None and config.data_dir.resolve() == Path(folder4).resolve()


def test_freezing_without_weights_says_the_frozen_layers_stay_random(files):
    from cnncli.commands import recipe

    model, folder, _ = files
    with pytest.warns(recipe.RecipeWarning, match="random initial weights"):
        training.configure(model, {}, data_dir=folder, freeze="backbone")
