"""``train --engine torch``: PyTorch runs the passes; a step equals the Numba engine's, runs are ordinary runs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import DATA, SignalAt, assert_same_weights, needs_mnist, run_main

from cnncli.commands import evaluation, training
from cnncli.engine import losses, optim
from cnncli.engine.network import Network
from cnncli.extras import install_hint
from cnncli.model import graph, spec
from cnncli.records import checkpoint

torch = pytest.importorskip("torch")
from cnncli.exchange.torch_engine import TorchNetwork  # noqa: E402  (after the skip: it needs the extra)

AUX = """
name: with-aux
input: [3, 12, 12]
classes: 5
layers:
  - conv: {filters: 4, kernel: 3, padding: 1, bias: false}
  - batchnorm
  - relu: {name: trunk}
  - global_avgpool: {name: side_pool}
  - dense: {name: aux1, units: 5, aux: 0.3}
  - maxpool: {kernel: 2, input: trunk}
  - flatten
  - dense: {units: 5}
"""


def _engines(model_spec: spec.ModelSpec, dtype: str = "float32"):
    g = graph.build(model_spec, aux=True)
    numba = Network(g, dtype, seed=5, fast=True, workers=1)
    torch_net = TorchNetwork(g, graph.build(model_spec, aux=False), model_spec.name, dtype, seed=5)
    return numba, torch_net


@pytest.mark.parametrize("model", ["lenet5", "resnet20", "with-aux"])
def test_one_step_equals_the_numba_engines(model, tmp_path):
    model_spec = spec.parse(AUX, "with-aux.yaml") if model == "with-aux" else spec.load(model)
    numba, torch_net = _engines(model_spec)
    for key in numba.params:
        np.testing.assert_array_equal(numba.params[key], torch_net.params[key])  # the same initial weights
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, *numba.graph.input_shape), dtype=np.float32)
    y = rng.integers(0, numba.graph.output_shape[0], 6)
    loss = losses.get(model_spec.loss)
    (value_a, out_a), (value_b, out_b) = numba.loss_and_backward(x, y, loss), torch_net.loss_and_backward(x, y, loss)
    assert value_b == pytest.approx(value_a, rel=1e-5)
    np.testing.assert_allclose(out_b, out_a, rtol=1e-4, atol=1e-5)
    assert set(torch_net.grads) == set(numba.grads)
    for key in numba.grads:
        np.testing.assert_allclose(torch_net.grads[key], numba.grads[key], rtol=1e-3, atol=2e-6, err_msg=key)
    for net in (numba, torch_net):
        optim.make("sgd", net.trainable(), 0.1, momentum=0.9, weight_decay=1e-4).step(net.grads)
    for key in numba.params:
        np.testing.assert_allclose(torch_net.params[key], numba.params[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for key in numba.buffers:  # batch norm's running statistics, written by PyTorch into cnncli's arrays
        np.testing.assert_allclose(torch_net.buffers[key], numba.buffers[key], rtol=1e-4, atol=1e-6, err_msg=key)
    # After the update PyTorch computes with the new weights (the arrays are shared, not copied).
    np.testing.assert_allclose(torch_net.predict(x, 4), numba.predict(x, 4), rtol=1e-4, atol=1e-5)
    numba.close()


@needs_mnist
def test_a_torch_run_is_an_ordinary_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNCLI_DATA", str(DATA))
    common = {"epochs": 2, "batch_size": 50}
    whole = training.train(training.configure("lenet5", common, limit=600, out=tmp_path / "whole", engine="torch"))
    numba = training.train(training.configure("lenet5", common, limit=600, out=tmp_path / "numba"))
    assert whole.status == "completed" and whole.config.engine == "torch"
    assert whole.test_acc == pytest.approx(numba.test_acc, abs=0.01)  # float rounding apart, the same training
    assert checkpoint.load(whole.last_path).config["engine"] == "torch"
    scored = evaluation.evaluate("lenet5", whole.last_path)
    assert scored.accuracy == pytest.approx(whole.test_acc, abs=1e-9)
    # Stopped inside epoch 2 and resumed on the torch engine: the same weights as the uninterrupted run.
    part = training.train(training.configure("lenet5", common, limit=600, out=tmp_path / "part", engine="torch"),
                          SignalAt(2, 4))
    assert part.status == "interrupted"
    resumed = training.train(training.configure("lenet5", {}, resume=part.last_path))
    assert resumed.config.engine == "torch"
    assert_same_weights(whole.last_path, resumed.last_path)
    # ... and a torch run's checkpoint goes on on the Numba engine.
    code, out, err = run_main(["train", "lenet5", "--resume", str(whole.last_path), "--epochs", "3",
                               "--engine", "numba"], capsys)
    assert code == 0, err


def test_without_torch_the_engine_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    code, _, err = run_main(["train", "lenet5", "--engine", "torch", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and install_hint("torch") in err


@pytest.mark.parametrize("model", ["resnet20", "with-aux"])
def test_copies_to_a_device_and_back_give_the_shared_tensors_bits(model):
    """The GPU path (--device cuda) copies cnncli's arrays to the device and back each pass; run on the CPU, the
    same code must give exactly what the shared tensors give: outputs, gradients, running statistics, over
    two steps (so the second upload carries the first update) and an inference after them."""
    model_spec = spec.parse(AUX, "with-aux.yaml") if model == "with-aux" else spec.load(model)
    g, infer = graph.build(model_spec, aux=True), graph.build(model_spec, aux=False)
    shared = TorchNetwork(g, infer, model_spec.name, "float32", seed=5)
    copied = TorchNetwork(g, infer, model_spec.name, "float32", seed=5, mirror=True)
    assert (shared.mirror, copied.mirror) == (False, True)
    rng = np.random.default_rng(1)
    loss = losses.get(model_spec.loss)
    opts = [optim.make("sgd", net.trainable(), 0.1, momentum=0.9) for net in (shared, copied)]
    for _ in range(2):
        x = rng.standard_normal((5, *g.input_shape), dtype=np.float32)
        y = rng.integers(0, g.output_shape[0], 5)
        (va, oa), (vb, ob) = shared.loss_and_backward(x, y, loss), copied.loss_and_backward(x, y, loss)
        assert va == vb
        np.testing.assert_array_equal(oa, ob)
        assert set(shared.grads) == set(copied.grads)
        for key in shared.grads:
            np.testing.assert_array_equal(shared.grads[key], copied.grads[key], err_msg=key)
        for net, opt in zip((shared, copied), opts):
            opt.step(net.grads)
    for key in shared.buffers:  # the device's running statistics came back into cnncli's arrays
        np.testing.assert_array_equal(shared.buffers[key], copied.buffers[key], err_msg=key)
    np.testing.assert_array_equal(shared.predict(x, 3), copied.predict(x, 3))
    assert all(p.data_ptr() != copied.params[k].ctypes.data  # copies, not views of cnncli's arrays
               for m in copied._modules.values() for k, p in m.named_parameters())


def test_device_mistakes_exit_2(tmp_path, capsys, monkeypatch):
    code, _, err = run_main(["train", "lenet5", "--device", "cuda", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "--engine torch" in err  # the Numba engine runs on the CPU
    code, _, err = run_main(["train", "lenet5", "--device", "tpu", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "tpu" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_main(["train", "lenet5", "--engine", "torch", "--device", "cuda",
                             "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "finds no CUDA GPU" in err and "leave --device out" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    code, _, err = run_main(["train", "lenet5", "--engine", "torch", "--device", "cuda", "--nproc", "4",
                             "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "needs a GPU per process; this machine has 2" in err
    assert not any((tmp_path / name).exists() for name in "abcd")  # nothing written for a refused run


def test_each_process_takes_its_gpu_and_nccl():
    from cnncli.exchange import torch_distributed as td

    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert td.from_environment("cuda") == td.Group(5, 8, "env://", "nccl", 1)
        assert td.from_environment() == td.Group(5, 8, "env://", "gloo", 1)
