"""ONNX export: every layer kind and every built-in model, run in onnxruntime, equal to cnncli's forward pass."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from exchange_cases import CASES
from helpers import run_main

from cnncli.commands.summary import builtin_models
from cnncli.engine.network import Network
from cnncli.extras import install_hint
from cnncli.model import graph, spec
from cnncli.model.kinds import KINDS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from cnncli.exchange import onnx_model  # noqa: E402  (after the skip: it needs the extra)

TOLERANCE = 1e-5  # float32 outputs of the same network in two engines


def _network(model_spec: spec.ModelSpec, seed: int = 0) -> Network:
    """The inference network with its initial weights and made-up running statistics (so batch norm is no identity)."""
    net = Network(graph.build(model_spec, aux=False), "float32", seed=seed, fast=True)
    rng = np.random.default_rng(seed + 1)
    for key, value in net.buffers.items():
        value[...] = rng.uniform(0.5, 1.5, value.shape) if key.endswith("var") else rng.normal(0, 0.2, value.shape)
    return net


def assert_runs_equal(model_spec: spec.ModelSpec, batch: int = 3, seed: int = 0) -> None:
    net = _network(model_spec, seed)
    proto = onnx_model.to_onnx(net.graph, net.params, net.buffers, model_spec.name)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed + 2).standard_normal((batch, *net.graph.input_shape), dtype=np.float32)
    expected = net.forward(x)
    got = session.run(None, {onnx_model.INPUT: x})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_every_layer_kind_has_a_translation_and_a_case():
    assert set(onnx_model.EMIT) == set(KINDS) == set(CASES)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_layer_kind_runs_as_cnncli_computes_it(kind):
    assert_runs_equal(spec.parse(CASES[kind], f"{kind}.yaml"))


def test_adaptive_pooling_matrices_are_pytorchs_windows():
    # 7 rows into 3: windows [0, 3), [2, 5), [4, 7), overlapping as PyTorch's adaptive pooling does.
    a = onnx_model._averaging(7, 3)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    assert [list(np.nonzero(row)[0]) for row in a] == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]


@pytest.mark.parametrize("name", [m.name for m in builtin_models()])
def test_every_built_in_model_runs_as_cnncli_computes_it(name):
    model_spec = spec.load(name)
    big = model_spec.input[-1] > 64
    assert_runs_equal(model_spec, batch=1 if big else 3)


def test_the_command_writes_a_checked_file_that_runs(lenet_checkpoint, tmp_path, capsys):
    path, net = lenet_checkpoint
    out = tmp_path / "lenet5.onnx"
    code, stdout, err = run_main(["export", "lenet5", "--checkpoint", str(path), "--to", "onnx", "-o", str(out)],
                                 capsys)
    assert code == 0, err
    said = " ".join(stdout.split())  # a long path may stand on a line of its own
    assert f"wrote {out}" in said and "input 'input' float32 [batch, 1, 28, 28]" in said
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == onnx_model.OPSET
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28), dtype=np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, net.forward(x), atol=TOLERANCE)
    assert not list(tmp_path.glob(".*.part"))
    code, stdout, _ = run_main(["export", "lenet5", "--checkpoint", str(path), "--to", "onnx", "-o", str(out),
                                "--format", "json"], capsys)
    record = json.loads(stdout)
    assert record["path"] == str(out) and record["output_shape"] == ["batch", 10] and record["bytes"] > 240_000


def test_mistakes_exit_2(lenet_checkpoint, tmp_path, capsys, monkeypatch):
    path, _ = lenet_checkpoint
    base = ["export", "lenet5", "--checkpoint", str(path), "--to", "onnx"]
    cases = [
        (["-o", str(tmp_path / "m.pt")], "an onnx export is a .onnx file"),
        (["-o", str(tmp_path / "nowhere" / "m.onnx")], "does not exist"),
    ]
    for args, message in cases:
        code, _, err = run_main([*base, *args], capsys)
        assert code == 2 and message in err, err
    code, _, err = run_main(["export", "resnet20", "--checkpoint", str(path), "--to", "onnx", "-o",
                             str(tmp_path / "r.onnx")], capsys)
    assert code == 2 and "has no" in err  # a checkpoint of another model
    monkeypatch.setitem(sys.modules, "onnx", None)
    code, _, err = run_main([*base, "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and install_hint("onnx") in err and not (tmp_path / "m.onnx").exists()
