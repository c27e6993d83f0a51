"""A missing extra is reported before any work: exit 2, the extra and its pip install named, nothing done."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_main

from cnncli import data, extras
from cnncli.commands import compare, training
from cnncli.data import folder
from cnncli.records import checkpoint, history

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[1]

#: A model whose file trains on an image folder (so no flag says so).
FOLDER_MODEL = """\
name: pictures
input: [1, 8, 8]
classes: 2
train: {dataset: image-folder}
layers:
  - flatten
  - dense: {units: 2}
"""

#: The package a missing extra is simulated by removing (sys.modules[name] = None makes importing it fail).
BLOCK = {"images": "PIL", "plots": "matplotlib", "onnx": "onnx", "torch": "torch"}

#: Where the work of the commands starts: none may run when an extra is missing.
WORK = [(checkpoint, "load"), (data, "load"), (folder, "scan"), (folder, "load"), (training, "train"),
        (compare, "run"), (history, "curves"), (history, "gradient_map")]

# (command line with {tmp} for the test's folder, the missing extra, what the message says needs it)
CASES = [
    ("plot {tmp}/run --out {tmp}/x.png", "plots", "(--out)"),
    ("plot {tmp}/run --gradients --out {tmp}/g.png", "plots", "(--out)"),
    ("features lenet5 --checkpoint {tmp}/c.npz --sample 0 --out {tmp}/f.png", "plots", "(--out)"),
    ("compare lenet5 lenet5-1998 --limit 100 --epochs 1 --out {tmp}/cmp --figure {tmp}/z.png", "plots",
     "(--figure)"),
    ("predict lenet5 {tmp}/x.png --checkpoint {tmp}/c.npz", "images", "reading image files"),
    ("features lenet5 --checkpoint {tmp}/c.npz --image {tmp}/x.png", "images", "(--image)"),
    ("explain lenet5 --weights {tmp}/c.npz --sample 0 --out {tmp}/e.png", "plots", "(--out)"),
    ("explain lenet5 --weights {tmp}/c.npz --image {tmp}/x.png", "images", "(--image)"),
    ("train lenet5 --dataset image-folder --data-dir {tmp}/pictures --out {tmp}/run1", "images", "image folders"),
    ("train {tmp}/pictures.yaml --data-dir {tmp}/pictures --out {tmp}/run1", "images", "image folders"),
    ("eval lenet5 --checkpoint {tmp}/c.npz --dataset image-folder --data-dir {tmp}/pictures", "images",
     "image folders"),
    ("features lenet5 --checkpoint {tmp}/c.npz --sample 0 --dataset image-folder --data-dir {tmp}/pictures",
     "images", "image folders"),
    ("compare lenet5 lenet5-1998 --dataset image-folder --data-dir {tmp}/pictures --out {tmp}/cmp", "images",
     "image folders"),
    ("backprop-trace {tmp}/pictures.yaml --sample 0 --data-dir {tmp}/pictures", "images", "image folders"),
    ("export lenet5 --checkpoint {tmp}/c.npz --to onnx -o {tmp}/m.onnx", "onnx", "(--to onnx)"),
    ("export lenet5 --checkpoint {tmp}/c.npz --to torch -o {tmp}/m.py", "torch", "(--to torch)"),
    ("train lenet5 --engine torch --limit 100 --epochs 1 --out {tmp}/run1", "torch", "(--engine torch)"),
]

#: Commands reading a PyTorch state dict, which needs no extra: they run with torch blocked.
READS_STATE_DICT = [
    "eval lenet5 --weights {tmp}/w.pt",
    "predict lenet5 {tmp}/x.png --weights {tmp}/w.pt",
    "features lenet5 --weights {tmp}/w.pt --sample 0",
    "backprop-trace lenet5 --weights {tmp}/w.pt --sample 0",
    "export lenet5 --weights {tmp}/w.pt --to onnx -o {tmp}/m.onnx",
]


@pytest.fixture
def inputs(tmp_path):
    """The files the command lines name; their contents are never read when an extra is missing."""
    for name in ("c.npz", "w.pt", "x.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "run").mkdir()
    (tmp_path / "pictures" / "a").mkdir(parents=True)
    (tmp_path / "pictures.yaml").write_text(FOLDER_MODEL)
    return tmp_path


@pytest.mark.parametrize("line,extra,what", CASES, ids=[f"{c[0].split()[0]}-{c[1]}-{i}" for i, c in
                                                         enumerate(CASES)])
def test_a_missing_extra_stops_the_command_before_any_work(line, extra, what, inputs, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started although an extra is missing")

    for module, name in WORK:
        monkeypatch.setattr(module, name, no_work)
    monkeypatch.setitem(sys.modules, BLOCK[extra], None)
    before = sorted(inputs.rglob("*"))
    code, out, err = run_main(line.format(tmp=inputs).split(), capsys)
    assert code == 2, err
    assert f"needs {extras.EXTRAS[extra].package}: {extras.install_hint(extra)}" in err
    assert what in err and "Traceback" not in out + err
    assert sorted(inputs.rglob("*")) == before  # no run or experiment folder, no file written


@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory):
    """A folder with LeNet-5's weights as a PyTorch state dict (w.pt), as the .npz it came from, and an image."""
    torch = pytest.importorskip("torch")  # to write the file; the commands then run without it
    from cnncli.engine.network import Network
    from cnncli.exchange import torch_module
    from cnncli.model import graph, spec

    folder = tmp_path_factory.mktemp("state_dict")
    net = Network(graph.build(spec.load("lenet5")), "float32", seed=3)
    torch.save(torch_module.state_dict(net.graph, net.params, net.buffers), folder / "w.pt")
    checkpoint.save(folder / "w.npz", net.state_dict(), {}, {"config": {"dataset": "mnist", "dtype": "float32"}})
    PIL = pytest.importorskip("PIL.Image")
    PIL.fromarray((np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)).save(folder / "x.png")
    return folder


@pytest.mark.parametrize("line", READS_STATE_DICT, ids=[line.split()[0] for line in READS_STATE_DICT])
def test_a_state_dict_is_read_without_torch(line, state_dict_file, capsys, monkeypatch):
    """The same output as from the .npz the state dict was exported from."""
    monkeypatch.setitem(sys.modules, "torch", None)
    outputs = []
    for weights in ("w.pt", "w.npz"):
        args = line.format(tmp=state_dict_file).replace("w.pt", weights).split() + ["--format", "json"]
        code, out, err = run_main(args, capsys)
        assert code == 0, err
        outputs.append(json.loads(out))
    for output in outputs:  # the weights' and written files' names differ; everything else must not
        for key in ("checkpoint", "weights", "path", "weights_path"):
            output.pop(key, None)
    assert outputs[0] == outputs[1]


def test_every_extra_of_pyproject_is_registered():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert set(extras.EXTRAS) == set(config["project"]["optional-dependencies"]) - {"test"}
    assert set(BLOCK) == set(extras.EXTRAS)  # and each one is tested above
    assert {extra for _, extra, _ in CASES} == set(extras.EXTRAS)


def test_an_installed_extra_passes_and_a_missing_one_names_purpose_and_install(monkeypatch):
    pytest.importorskip("PIL.Image")
    extras.require("images", "reading image files")
    monkeypatch.setitem(sys.modules, "PIL.ImageOps", None)  # one of the extra's modules is enough
    with pytest.raises(extras.UsageError) as raised:
        extras.require("images", "reading image files (--image)")
    assert str(raised.value) == f"reading image files (--image) needs Pillow: {extras.install_hint('images')}"


def test_the_install_hint_names_the_packages_of_the_extra_with_pyprojects_bounds():
    """Not ``cnncli[extra]``: cnncli is installed from its folder, and an index may hold another project so named."""
    import tomllib

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    for name, packages in declared["project"]["optional-dependencies"].items():
        if name == "test":
            continue
        hint = extras.install_hint(name)
        assert hint.startswith("pip install ") and "cnncli[" not in hint
        for requirement in packages:
            assert f"'{requirement}'" in hint


def test_the_torch_hint_offers_pytorchs_cpu_build():
    """pip's default PyTorch wheel on Linux is the CUDA build (several GB): the hint says how to take the CPU one."""
    hint = extras.install_hint("torch")
    assert "--index-url https://download.pytorch.org/whl/cpu" in hint
    assert "download.pytorch.org" not in extras.install_hint("images")
