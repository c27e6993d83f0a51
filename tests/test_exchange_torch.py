"""PyTorch export and import: the written module computes cnncli's outputs and gradients (float64), and a
state dict comes back in as weights."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from exchange_cases import CASES
from helpers import run_main

from cnncli.engine.network import Network
from cnncli.extras import install_hint
from cnncli.model import graph, spec
from cnncli.model.kinds import KINDS
from cnncli.records import checkpoint

torch = pytest.importorskip("torch")
from cnncli.exchange import torch_module  # noqa: E402  (after the skip: it needs the extra)


def _load_module(source: str, name: str, tmp_path):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    loaded = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def _pair(model_spec: spec.ModelSpec, tmp_path, seed: int = 0):
    """cnncli's float64 network (made-up running statistics) and the exported module with its weights."""
    g = graph.build(model_spec, aux=False)
    net = Network(g, "float64", seed=seed)
    rng = np.random.default_rng(seed + 1)
    for key, value in net.buffers.items():
        value[...] = rng.uniform(0.5, 1.5, value.shape) if key.endswith("var") else rng.normal(0, 0.2, value.shape)
    source = torch_module.module_source(g, model_spec.name, "a test", "weights.pt")
    module_file = _load_module(source, f"exported_{abs(hash(model_spec.name)) % 10**8}", tmp_path)
    module = getattr(module_file, torch_module.class_name(model_spec.name))().double()
    state = torch.load(torch_module.io.BytesIO(torch_module.save_state_dict(
        torch_module.state_dict(g, net.params, net.buffers, "float64"), tmp_path)), weights_only=True)
    module.load_state_dict(state)  # strict: every name the module has, and no other
    return net, module


def assert_same(model_spec: spec.ModelSpec, tmp_path, batch: int = 3, gradients: bool = True) -> None:
    net, module = _pair(model_spec, tmp_path)
    g = net.graph
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch, *g.input_shape))
    # Inference: running statistics, no dropout.
    np.testing.assert_allclose(module.eval()(torch.from_numpy(x)).detach().numpy(), net.forward(x), rtol=1e-10,
                               atol=1e-12)
    if not gradients:
        return
    # Training mode: batch statistics; the gradient of Σ out·R for a fixed R, for every parameter and the input.
    out = net.forward(x, train=True)
    r = rng.standard_normal(out.shape)
    net.backward({g.output: r})
    xt = torch.from_numpy(x).requires_grad_(True)
    (module.train()(xt) * torch.from_numpy(r)).sum().backward()
    named = {k: p for k, p in module.named_parameters() if p.requires_grad}
    assert set(named) == set(net.grads)
    for key, grad in net.grads.items():
        theirs = named[key].grad.numpy()
        if key.rsplit(".", 1)[0] in {n.name for n in g.nodes if n.kind == "dense"} and key.endswith(".weight"):
            theirs = theirs.T
        np.testing.assert_allclose(theirs, grad, rtol=1e-8, atol=1e-10, err_msg=key)
    np.testing.assert_allclose(xt.grad.numpy(), net.input_grad, rtol=1e-8, atol=1e-10)


def test_every_layer_kind_has_a_translation_and_a_case():
    assert set(torch_module.KINDS_COVERED) == set(KINDS) == set(CASES)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_layer_kind_computes_cnncli_outputs_and_gradients(kind, tmp_path):
    # Dropout draws its masks differently in each engine: compared at inference only.
    assert_same(spec.parse(CASES[kind], f"{kind}.yaml"), tmp_path, gradients=kind != "dropout")


@pytest.mark.parametrize("name", ["lenet5", "lenet5-1998", "resnet20", "plain20", "vgg11-bn", "googlenet-cifar",
                                  "slide-mlp"])
def test_built_in_models_compute_cnncli_outputs_and_gradients(name, tmp_path):
    assert_same(spec.load(name), tmp_path, batch=2)


@pytest.mark.parametrize("name", ["alexnet-cifar", "resnet18", "googlenet"])
def test_models_with_dropout_or_224_inputs_compute_cnncli_outputs(name, tmp_path):
    assert_same(spec.load(name), tmp_path, batch=1, gradients=False)


def test_class_names_and_module_paths_are_python():
    assert torch_module.class_name("resnet20") == "Resnet20"
    assert torch_module.class_name("lenet5-1998") == "Lenet5_1998"
    assert torch_module.class_name("3x3") == "Model_3x3"
    assert torch_module._module_ref("layer1.0.conv1") == 'self.layer1[\'0\'][\'conv1\']'
    assert torch_module._module_ref("class") == "self._modules['class']"


def test_export_then_import_round_trips_the_weights(lenet_checkpoint, tmp_path, capsys):
    path, net = lenet_checkpoint
    out = tmp_path / "lenet.py"
    code, stdout, err = run_main(["export", "lenet5", "--checkpoint", str(path), "--to", "torch", "-o", str(out)],
                                 capsys)
    assert code == 0, err
    assert "class Lenet5" in stdout and (tmp_path / "lenet.pt").is_file()
    module = _load_module(out.read_text(), "lenet_exported", tmp_path).Lenet5()
    module.load_state_dict(torch.load(tmp_path / "lenet.pt", weights_only=True))
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(module.eval()(torch.from_numpy(x)).detach().numpy(), net.forward(x), atol=1e-5)
    # ... and the state dict is a checkpoint for cnncli again: names mapped, dense weights transposed back.
    back = checkpoint.load(tmp_path / "lenet.pt")
    weights = back.weights_for(net.graph)
    assert set(weights) == set(net.state_dict())
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(weights[key], value, err_msg=key)
    code, stdout, err = run_main(["export", "lenet5", "--checkpoint", str(path), "--to", "torch", "-o", str(out),
                                  "--format", "json"], capsys)
    assert json.loads(stdout)["class_name"] == "Lenet5"


def test_a_state_dict_is_accepted_where_a_checkpoint_is(lenet_checkpoint, tmp_path, capsys):
    path, net = lenet_checkpoint
    state = torch_module.state_dict(net.graph, net.params, net.buffers)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)  # DataParallel's names
    code, from_torch, err = run_main(["backprop-trace", "lenet5", "--weights", str(wrapped), "--format", "json"],
                                     capsys)
    assert code == 0, err
    code, from_npz, err = run_main(["backprop-trace", "lenet5", "--weights", str(path), "--format", "json"], capsys)
    trace_torch, trace_npz = json.loads(from_torch), json.loads(from_npz)
    trace_torch.pop("weights", None), trace_npz.pop("weights", None)  # the file names differ; the numbers may not
    assert code == 0 and trace_torch == trace_npz
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module: refused, nothing executed
    code, _, err = run_main(["backprop-trace", "lenet5", "--weights", str(pickled)], capsys)
    assert code == 2 and "cannot be loaded safely" in err and "Traceback" not in err


def test_without_torch_the_extra_is_named(lenet_checkpoint, tmp_path, capsys, monkeypatch):
    path, _ = lenet_checkpoint
    monkeypatch.setitem(sys.modules, "torch", None)
    code, _, err = run_main(["export", "lenet5", "--checkpoint", str(path), "--to", "torch", "-o",
                             str(tmp_path / "m.py")], capsys)
    assert code == 2 and install_hint("torch") in err and not (tmp_path / "m.py").exists()
