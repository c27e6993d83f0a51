"""Which weights a command takes: a checkpoint of another network is refused, a file that is no checkpoint is
named for what it is.

``maxnet`` and ``avgnet`` have the same parameters (a convolution ``conv`` and a dense layer ``fc``) and
differ in one pooling layer, as ``plain20`` and ``resnet20`` differ only in their wiring: the weights of one
load into the other without a complaint about shapes. ``mycopy`` is ``maxnet`` under another name, a user's
renamed copy of the model file. The checkpoint is a real run of ``maxnet`` (one short epoch on MNIST).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from helpers import needs_mnist, run_main

from cnncli.commands import training
from cnncli.records import checkpoint

PIL = pytest.importorskip("PIL.Image")
pytestmark = [needs_mnist, pytest.mark.usefixtures("mnist_env")]

MAXNET = """\
name: {name}
input: [1, 28, 28]
classes: 10
train: {{dataset: mnist, batch_size: 50, epochs: 1, val_size: 50}}
layers:
  - conv: {{name: conv, filters: 2, kernel: 5, stride: 2}}
  - relu
  - {pool}: {{kernel: 2}}
  - flatten
  - dense: {{name: fc, units: 10}}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    (folder / "changed").mkdir()
    files = {"maxnet": folder / "maxnet.yaml", "avgnet": folder / "avgnet.yaml", "mycopy": folder / "mycopy.yaml",
             "changed": folder / "changed" / "maxnet.yaml"}  # maxnet's name, avgnet's layers
    for path, (name, pool) in zip(files.values(), [("maxnet", "maxpool"), ("avgnet", "avgpool"),
                                                   ("mycopy", "maxpool"), ("maxnet", "avgpool")]):
        path.write_text(MAXNET.format(name=name, pool=pool))
    return {key: str(path) for key, path in files.items()}


@pytest.fixture(scope="module")
def run_dir(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "maxnet"
    training.train(training.configure(models["maxnet"], {}, limit=200, out=out))
    return out


@pytest.fixture(scope="module")
def digit(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "one.png"
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = 255
    PIL.fromarray(pixels, mode="L").save(path)
    return str(path)


# Each command that reads weights: its arguments for a model and a checkpoint (tmp: a folder for its output).
COMMANDS = {
    "eval": lambda model, ckpt, tmp, image: ["eval", model, "--checkpoint", ckpt, "--format", "json"],
    "predict": lambda model, ckpt, tmp, image: ["predict", model, image, "--checkpoint", ckpt, "--format", "json"],
    "features": lambda model, ckpt, tmp, image: ["features", model, "--checkpoint", ckpt, "--sample", "0",
                                                 "--format", "json"],
    "export": lambda model, ckpt, tmp, image: ["export", model, "--checkpoint", ckpt, "--to", "onnx",
                                               "-o", str(tmp / "model.onnx"), "--format", "json"],
    "backprop-trace": lambda model, ckpt, tmp, image: ["backprop-trace", model, "--weights", ckpt, "--sample", "0",
                                                       "--format", "json"],
    "train --resume": lambda model, ckpt, tmp, image: ["train", model, "--resume", ckpt, "--epochs", "2",
                                                       "--out", str(tmp / "resumed")],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_checkpoint_of_another_network_is_refused_with_both_names_the_file_and_the_way_out(
        command, models, run_dir, digit, tmp_path, capsys):
    ckpt = str(run_dir / "last.npz")
    code, out, err = run_main(COMMANDS[command](models["avgnet"], ckpt, tmp_path, digit), capsys)
    assert code == 2, err
    assert "Traceback" not in err
    for part in (ckpt, "'maxnet'", "'avgnet'", "--skip-model-check"):
        assert part in err
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "resumed").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_skip_model_check_uses_the_weights_anyway(command, models, run_dir, digit, tmp_path, capsys):
    argv = COMMANDS[command](models["avgnet"], str(run_dir / "last.npz"), tmp_path, digit)
    code, out, err = run_main([*argv, "--skip-model-check"], capsys)
    assert code == 0, err
    # The user said they know; the weights' origin is still said once, as results of another network's
    # weights are theirs to judge.
    assert err.count("warning:") == 1 and "'maxnet', not 'avgnet'" in err and "--skip-model-check asks" in err


def test_a_renamed_copy_of_the_model_file_is_the_same_network_and_scores_the_same(models, run_dir, capsys):
    ckpt = str(run_dir / "best.npz")
    code, own, err = run_main(["eval", models["maxnet"], "--checkpoint", ckpt, "--format", "json"], capsys)
    assert code == 0 and err == ""
    code, copy, err = run_main(["eval", models["mycopy"], "--checkpoint", ckpt, "--format", "json"], capsys)
    assert code == 0
    assert err.startswith("warning: ") and "'maxnet'" in err and "'mycopy'" in err and "same network" in err
    own, copy = json.loads(own), json.loads(copy)
    assert copy["model"] == "mycopy" and copy["accuracy"] == own["accuracy"] and copy["loss"] == own["loss"]


def test_a_model_file_changed_since_training_is_refused(models, run_dir, capsys):
    ckpt = str(run_dir / "best.npz")
    code, _, err = run_main(["eval", models["changed"], "--checkpoint", ckpt], capsys)
    assert code == 2
    assert models["changed"] in err and "'maxnet'" in err and "changed" in err and "--skip-model-check" in err


def test_without_a_fingerprint_the_name_decides_and_weights_alone_are_not_checked(models, run_dir, tmp_path, capsys):
    saved = checkpoint.load(run_dir / "best.npz")
    meta = {k: v for k, v in saved.meta.items() if k != checkpoint.NETWORK}  # as an earlier cnncli wrote it
    older = tmp_path / "older.npz"
    checkpoint.save(older, saved.weights(), saved.optimizer(), meta)
    code, _, err = run_main(["eval", models["avgnet"], "--checkpoint", str(older)], capsys)
    assert code == 2 and "'maxnet', not 'avgnet'" in err and "--skip-model-check" in err
    code, _, err = run_main(["eval", models["maxnet"], "--checkpoint", str(older), "--format", "json"], capsys)
    assert code == 0, err
    alone = tmp_path / "alone.npz"
    np.savez(alone, **saved.weights())  # weights and nothing else: nothing says which model
    code, _, err = run_main(["eval", models["avgnet"], "--checkpoint", str(alone), "--format", "json"], capsys)
    assert code == 0 and err == ""


def test_compare_refuses_to_go_on_with_a_changed_model_file_and_says_what_to_do(models, tmp_path, capsys):
    first = tmp_path / "maxnet.yaml"
    first.write_text(MAXNET.format(name="maxnet", pool="maxpool"))
    argv = ["compare", str(first), models["avgnet"], "--epochs", "1", "--limit", "100", "--out",
            str(tmp_path / "exp"), "--format", "json"]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    first.write_text(MAXNET.format(name="maxnet", pool="avgpool"))
    argv[argv.index("--epochs") + 1] = "2"
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert str(tmp_path / "exp" / "maxnet") in err and "choose a new --out" in err
    assert "--skip-model-check" not in err  # compare has no such flag


def _files(folder):
    """Files that are not checkpoints, and the words that must say what each is."""
    files = {}
    files["text"] = folder / "notes.npz"
    files["text"].write_text("these are not weights\n")
    files["pickled npy"] = folder / "objects.npy"
    np.save(files["pickled npy"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    files["pickled entry"] = folder / "objects.npz"
    np.savez(files["pickled entry"], w=np.array([{"a": 1}], dtype=object))
    files["pickle"] = folder / "weights.pkl"
    files["pickle"].write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    files["random bytes"] = folder / "noise.npz"
    files["random bytes"].write_bytes(b"\x00" + np.random.default_rng(0).bytes(999))
    return files


WHAT = {"text": "it is a text file", "pickled npy": "single array (.npy)", "pickled entry": "Python objects",
        "pickle": "it is a Python pickle", "random bytes": "binary data"}


@pytest.mark.parametrize("kind", WHAT)
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is_without_numpys_advice(kind, tmp_path, capsys):
    path = _files(tmp_path)[kind]
    code, _, err = run_main(["eval", "lenet5", "--checkpoint", str(path)], capsys)
    assert code == 2
    assert str(path) in err and WHAT[kind] in err
    assert "allow_pickle" not in err and "unsafely" not in err and "Traceback" not in err


def test_a_whole_pickled_torch_module_is_refused_without_torchs_advice(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    code, _, err = run_main(["eval", "lenet5", "--checkpoint", str(path)], capsys)
    assert code == 2 and "model.state_dict()" in err
    assert "trust" not in err and "weights_only" not in err and "\x1b" not in err


def test_a_trace_input_that_is_no_array_is_named_for_what_it_is(tmp_path, capsys):
    path = tmp_path / "x.npy"
    path.write_text("1, 2, 3\n")
    code, _, err = run_main(["backprop-trace", "--input", str(path)], capsys)
    assert code == 2 and "is not a .npy array file: it is a text file" in err and "allow_pickle" not in err
