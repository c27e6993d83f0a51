"""A table of user mistakes: each exits with status 2, says what was wrong, and shows no traceback."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, run_main

from cnncli.model import graph, spec


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad files of every sort a user might hand over (written once for the module: no case changes them)."""
    tmp_path = tmp_path_factory.mktemp("bad-files")
    f: dict[str, Path] = {}
    f["malformed"] = tmp_path / "malformed.yaml"
    f["malformed"].write_text("input: [1, 28, 28]\nlayers:\n  - conv: {filters: 6, kernel: 5\n  - relu\n")
    f["unknown_kind"] = tmp_path / "kind.yaml"
    f["unknown_kind"].write_text("input: [1, 28, 28]\nlayers:\n  - convolution: {filters: 6, kernel: 5}\n")
    f["bad_type"] = tmp_path / "type.yaml"
    f["bad_type"].write_text("input: [1, 28, 28]\nlayers:\n  - conv: {filters: six, kernel: 5}\n")
    f["bad_shape"] = tmp_path / "shape.yaml"
    f["bad_shape"].write_text("input: [1, 8, 8]\nlayers:\n  - conv: {filters: 3, kernel: 3, padding: 1}\n"
                              "  - add: {inputs: [input, conv1]}\n")
    f["deep"] = tmp_path / "deep.yaml"
    f["deep"].write_text("input: [1, 28, 28]\nlayers: " + "[" * 5000 + "]" * 5000 + "\n")
    f["deep_mapping"] = tmp_path / "deep_mapping.yaml"
    f["deep_mapping"].write_text("input: [1, 28, 28]\nlayers: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
    f["huge"] = tmp_path / "huge.yaml"
    f["huge"].write_text("input: [4]\nlayers: [relu]\n" + "#" * 10_000_000 + "\n")
    f["not_a_model"] = tmp_path / "list.yaml"
    f["not_a_model"].write_text("- just\n- a list\n")
    # A checkpoint whose first convolution has the wrong shape, and one that is not a .npz at all.
    f["wrong_ckpt"] = tmp_path / "wrong.npz"
    weights = {k: np.zeros(s, np.float32) for k, s in graph.build(spec.load("lenet5")).param_shapes().items()}
    weights["c1.weight"] = np.zeros((5, 1, 5, 5), np.float32)
    np.savez(f["wrong_ckpt"], **weights)
    f["corrupt_ckpt"] = tmp_path / "corrupt.npz"
    f["corrupt_ckpt"].write_bytes(b"PK\x03\x04 this is not really a zip file")
    f["wrong_input"] = tmp_path / "x.npy"
    np.save(f["wrong_input"], np.zeros((3, 32, 32)))
    f["a_file"] = tmp_path / "occupied"
    f["a_file"].write_text("a user's file")
    # Dataset folders: empty, a wrong magic number, a truncated image file.
    f["empty_data"] = tmp_path / "empty"
    f["empty_data"].mkdir()
    for name, header, body in (("bad_magic", struct.pack(">iiii", 1234, 10, 28, 28), b"\0" * 7840),
                               ("truncated", struct.pack(">iiii", 2051, 10, 28, 28), b"\0" * 100)):
        folder = tmp_path / name / "mnist"
        folder.mkdir(parents=True)
        for split, n in (("train", 10), ("t10k", 10)):
            (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + body))
            (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
                gzip.compress(struct.pack(">ii", 2049, n) + bytes(range(n))))
        f[name] = tmp_path / name
    return f


CASES = [
    # (id, argv with {placeholders}, message fragment)
    ("malformed yaml", ["summarize", "{malformed}"], "(while parsing a flow mapping at line 3, column 11)"),
    ("unknown kind", ["summarize", "{unknown_kind}"], "unknown layer kind 'convolution' — did you mean 'conv'?"),
    ("wrong option type", ["summarize", "{bad_type}"], "filters must be an integer"),
    ("shapes that do not fit", ["summarize", "{bad_shape}"], "inputs have different shapes"),
    ("not a model", ["summarize", "{not_a_model}"], "a model file is a mapping"),
    ("model nested 5,000 deep", ["summarize", "{deep}"], "nest deeper than 100 levels"),
    ("mapping nested 5,000 deep", ["train", "{deep_mapping}"], "nest deeper than 100 levels"),
    ("model file over 10 MB", ["summarize", "{huge}"], "a model file may be at most 10 MB"),
    ("input too small", ["summarize", "vgg16", "--input", "3x16x16"], "is larger than its input"),
    ("malformed input size", ["summarize", "vgg16", "--input", "3by224"], "must look like 3x224x224"),
    ("unknown model", ["train", "lenet6"], "built-in models:"),
    ("zero learning rate", ["train", "lenet5", "--lr", "0"], "--lr must be positive"),
    ("negative learning rate", ["train", "lenet5", "--lr", "-0.1"], "--lr must be positive"),
    ("batch size 0", ["train", "lenet5", "--batch-size", "0"], "--batch-size must be positive"),
    ("epochs below 1", ["train", "lenet5", "--epochs", "0"], "--epochs must be at least 1"),
    ("bad limit", ["train", "lenet5", "--limit", "0"], "--limit must be a positive number"),
    ("output is a file", ["train", "lenet5", "--out", "{a_file}"], "is a file"),
    ("resume from nothing", ["train", "lenet5", "--resume", "{empty_data}/last.npz"], "last.npz"),
    ("checkpoint that does not fit", ["eval", "lenet5", "--checkpoint", "{wrong_ckpt}"], "'c1.weight' has shape 5×1×5×5 but the model needs 6×1×5×5"),
    ("corrupt checkpoint", ["eval", "lenet5", "--checkpoint", "{corrupt_ckpt}"], "corrupt.npz"),
    ("missing checkpoint", ["eval", "lenet5", "--checkpoint", "{empty_data}/none.npz"], "none.npz"),
    ("trace input of the wrong shape", ["backprop-trace", "lenet5", "--input", "{wrong_input}"], "shape"),
    ("trace target out of range", ["backprop-trace", "--target", "7"], "target"),
    ("trace malformed input list", ["backprop-trace", "--input", "0.1,zwei,0.7"], "zwei"),
    ("dataset missing", ["eval", "lenet5", "--checkpoint", "{wrong_ckpt}", "--data-dir", "{empty_data}"], None),
    ("wrong magic number", ["train", "lenet5", "--data-dir", "{bad_magic}", "--out", "{out}/run1"], "magic"),
    ("truncated dataset file", ["train", "lenet5", "--data-dir", "{truncated}", "--out", "{out}/run2"],
     "truncated"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistakes_exit_2_with_a_message(argv, fragment, files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")              # never reach for the network
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNCLI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    args = [a.format(out=tmp_path, **{k: str(v) for k, v in files.items()}) for a in argv]
    code, out, err = run_main(args, capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    assert err.startswith("error: ") and len(err.strip()) > 10
    if fragment:
        assert fragment in err, err
    # The user's files are as they were, so the next case meets them unchanged too.
    assert files["a_file"].read_text() == "a user's file"
    assert list(files["empty_data"].iterdir()) == []


@pytest.mark.skipif(DATA is None, reason="the MNIST files are not beside the repository")
@pytest.mark.parametrize("argv,fragment", [
    (["train", "lenet5", "--limit", "1000000"], "--limit"),
    (["backprop-trace", "lenet5", "--sample", "10000"], "10000"),
])
def test_values_beyond_the_dataset(argv, fragment, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNCLI_DATA", str(DATA))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(argv + ["--out", str(tmp_path / "run")] if argv[0] == "train" else argv, capsys)
    assert code == 2 and fragment in err and "Traceback" not in out + err


# A path a command is to write, checked before any work (cnncli.atomic): (id, argv, the function the command
# would run first, the message). {missing} is a folder that does not exist, {a_file} a file, {folder} a folder.
OUTPUTS = [
    ("features --out", ["features", "lenet5", "--weights", "w.npz", "--sample", "0", "--out", "{missing}/m.png"],
     ("cnncli.commands.features", "features"), "cannot write --out {missing}/m.png: the folder {missing} does not exist"),
    ("explain --out", ["explain", "lenet5", "--weights", "w.npz", "--sample", "0", "--out", "{a_file}/cam.png"],
     ("cnncli.commands.explain", "explain"), "cannot write --out {a_file}/cam.png: {a_file} is a file, not a folder"),
    ("explain --out a folder", ["explain", "lenet5", "--weights", "w.npz", "--sample", "0", "--out", "{folder}"],
     ("cnncli.commands.explain", "explain"), "--out {folder} is a folder: give the name of a file to write in it"),
    ("plot --out", ["plot", "run", "--out", "{missing}/curves.svg"], ("cnncli.records.history", "curves"),
     "cannot write --out {missing}/curves.svg: the folder {missing} does not exist"),
    ("compare --figure", ["compare", "lenet5", "lenet5-1998", "--figure", "{missing}/errors.pdf"],
     ("cnncli.commands.compare", "plan"), "cannot write --figure {missing}/errors.pdf: the folder {missing} does not exist"),
    ("compare --out", ["compare", "lenet5", "lenet5-1998", "--out", "{a_file}/exp"], ("cnncli.commands.compare", "run"),
     "cannot make --out {a_file}/exp: {a_file} is a file, not a folder"),
    ("train --out", ["train", "lenet5", "--out", "{a_file}/runs/a"], ("cnncli.commands.training", "train"),
     "cannot make --out {a_file}/runs/a: {a_file} is a file, not a folder"),
    ("export -o", ["export", "lenet5", "--weights", "w.npz", "--to", "onnx", "-o", "{missing}/m.onnx"],
     ("cnncli.records.trained", "load"), "cannot write -o {missing}/m.onnx: the folder {missing} does not exist"),
    ("backprop-trace --dump", ["backprop-trace", "lenet5", "--dump", "{missing}/g.npz"],
     ("cnncli.lecture.trace", "_network"), "cannot write --dump {missing}/g.npz: the folder {missing} does not exist"),
]


@pytest.mark.parametrize("argv,first,message", [c[1:] for c in OUTPUTS], ids=[c[0] for c in OUTPUTS])
def test_output_paths_are_checked_before_any_work(argv, first, message, capsys, monkeypatch, tmp_path):
    """A file is written into a folder that exists, a folder is made where no file stands in the way: told at
    once (status 2, the option, the path and the rule), before the command loads, trains or downloads anything."""
    import importlib

    started = []
    monkeypatch.setattr(importlib.import_module(first[0]), first[1], lambda *a, **k: started.append(a))
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "occupied").write_text("a user's file")
    (tmp_path / "folder").mkdir()
    names = {"missing": str(tmp_path / "nowhere"), "a_file": str(tmp_path / "occupied"),
             "folder": str(tmp_path / "folder")}
    code, out, err = run_main([a.format(**names) for a in argv], capsys)
    assert code == 2 and message.format(**names) in err, err
    assert not started and "Traceback" not in out + err
    assert not (tmp_path / "nowhere").exists()
