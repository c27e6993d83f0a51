"""The benchmark harness still runs against today's engine: each cnncli workload once, no timing asserted.

benchmarks/bench.py is not run by CI (its numbers depend on the machine), so a
renamed or moved engine function would break it silently; these tests run its
cnncli workers as the harness does (a fresh process each, the repository first
on the path) and check that they report a result, every workload at its tiny
``--smoke`` shapes. The LeNet-5 workloads read the MNIST files; the others run on
synthetic data. With torch installed, the PyTorch networks the harness builds from cnncli
graphs are checked to be the same networks (float64: loss, gradients, output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import DATA, REPO


@pytest.mark.skipif(DATA is None, reason="the MNIST files are not beside the repository")
@pytest.mark.parametrize("workload,field", [("train64", "images_per_s"), ("infer", "images_per_s"),
                                            ("vgg", "seconds")])
def test_cnncli_workers_of_the_benchmark_run(workload, field):
    # Tiny shapes (BENCH_SMOKE): the same code as the real workloads, so only that they run is checked.
    env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_DATA_DIR=str(DATA), BENCH_SMOKE="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--worker", "cnncli", workload],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result[field] > 0


# --- modern CNNs: the workers at tiny shapes, and the PyTorch translation of a cnncli graph ------------

def _bench():
    """benchmarks/bench.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cnncli_bench", REPO / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_modern_workloads_are_registered():
    bench = _bench()
    assert tuple(bench.MODERN) == bench.MODERN_WORKLOADS == tuple(bench.SMOKE)
    for w in bench.MODERN_WORKLOADS:
        assert ("cnncli", w) in bench.WORKERS and ("torch", w) in bench.WORKERS and w in bench.LABELS


@pytest.mark.parametrize("workload,field", [("resnet20", "images_per_s"), ("resnet18", "seconds"),
                                            ("finetune-resnet18", "images_per_s"), ("infer-resnet20", "images_per_s")])
def test_cnncli_modern_workers_at_smoke_size(workload, field):
    # Training (batch split, worker processes), forward + backward and inference, each a fresh
    # process as the harness runs them; tiny shapes (BENCH_SMOKE), so only that they run is checked.
    env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_SMOKE="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--worker", "cnncli", workload],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result[field] > 0 and result["gflops"] > 0
    assert result["macs_per_image"] > 0


@pytest.mark.parametrize("workload", ["resnet20", "finetune-resnet18", "infer-resnet20"])
def test_torch_modern_workers_at_smoke_size(workload):
    # As the harness runs its "torch-passive" configuration: PyTorch's spinning OpenMP threads
    # would make this test crawl whenever something else holds a core.
    pytest.importorskip("torch")
    env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_SMOKE="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--worker", "torch", workload],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["images_per_s"] > 0 and result["gflops"] > 0


@pytest.mark.parametrize("workload,field", [("resnet20", "images_per_s"), ("googlenet", "seconds")])
def test_torch_engine_workers_at_smoke_size(workload, field):
    # --engines: cnncli's loop on its torch engine (train --engine torch), as the harness runs it.
    pytest.importorskip("torch")
    bench = _bench()
    assert all(("cnncli-torch", w) in bench.WORKERS for w in bench.ENGINE_WORKLOADS)
    env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_SMOKE="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--worker", "cnncli-torch",
                           workload], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result[field] > 0 and result["gflops"] > 0


@pytest.mark.parametrize("model,input_shape,batch,train,fast", [
    ("resnet20", None, 4, True, False),             # option-A shortcuts, batch norm in training
    ("resnet20", (1, 28, 28), 2, True, False),      # the MNIST-shaped variant
    ("resnet20", (3, 8, 8), 32, True, True),        # the benchmark's fast network, split in two parts
    ("vgg11-bn", None, 2, True, False),             # conv biases, max pooling, flatten, dense
    ("googlenet", (3, 64, 64), 2, False, False),    # concat, ceil-mode pooling; eval (dropout draws differ)
    ("finetune-resnet18", (3, 32, 32), 4, True, True),  # the workload's frozen backbone and 10-class head
])
def test_torch_translation_computes_cnncli_network(model, input_shape, batch, train, fast):
    """The PyTorch network the benchmark builds from a cnncli graph is the same network: with cnncli's
    initial weights, in float64, the same loss (within 1e-9) and parameter gradients, and the same
    inference output afterwards (batch norm's running statistics updated alike). A model named as a
    workload is built as that workload builds it (its head, its frozen layers)."""
    torch = pytest.importorskip("torch")
    # One thread: these shapes are tiny, and PyTorch's spinning OpenMP threads crawl whenever
    # something else holds a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_translation(model, input_shape, batch, train, fast)
    finally:
        torch.set_num_threads(threads)


def _check_translation(model, input_shape, batch, train, fast):
    import numpy as np
    import torch

    from cnncli.engine import losses
    from cnncli.engine.network import Network
    from cnncli.model import spec
    from cnncli.model.graph import build

    bench = _bench()
    if model in bench.MODERN:
        graph = bench._graph(bench.MODERN[model]._replace(input=input_shape))
    else:
        graph = build(spec.load(model), input_shape)
    net = Network(graph, "float64", seed=0, fast=fast)
    drawn = bench._initial_params(graph, "float64")  # what the benchmark's PyTorch workers start from
    assert drawn.keys() == net.params.keys()
    assert all(np.array_equal(drawn[k], net.params[k]) for k in drawn)
    rng = np.random.default_rng(2)
    for key, value in net.buffers.items():  # running statistics unlike any batch's (a frozen norm uses them)
        value[...] = rng.uniform(0.5, 1.5, value.shape) if key.endswith("var") else rng.normal(0, 0.2, value.shape)
    module = bench.torch_network(graph, {k: v.copy() for k, v in net.params.items()},
                                 {k: v.copy() for k, v in net.buffers.items()}, dtype="float64")

    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *graph.input_shape))
    y = rng.integers(0, graph.output_shape[0], batch)
    try:
        expected, _ = net.loss_and_backward(x, y, losses.get("cross_entropy"), train=train)
        module.train(train)
        got = bench.torch_loss(module, torch.from_numpy(x), torch.from_numpy(y), train=train)
        got.backward()
        assert abs(got.item() - expected) < 1e-9

        scale = max(float(np.abs(g).max()) for g in net.grads.values())
        for i, node in enumerate(graph.nodes):
            for suffix in node.params:
                grad = getattr(module.holders[str(i)], suffix).grad
                if grad is None:  # an auxiliary head outside an evaluation loss, or a frozen layer
                    assert not train or node.frozen, f"{node.name}.{suffix}"
                    continue
                assert not node.frozen, f"{node.name}.{suffix}"
                grad = grad.numpy().T if node.kind == "dense" and suffix == "weight" else grad.numpy()
                # Absolute: a conv bias in front of batch norm has a gradient of exactly 0 up to rounding.
                np.testing.assert_allclose(grad, net.grads[f"{node.name}.{suffix}"], rtol=0, atol=1e-9 * scale,
                                           err_msg=f"{node.name}.{suffix}")

        module.eval()
        with torch.no_grad():
            out = module(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(out, net.forward(x, train=False), rtol=0, atol=1e-9)
    finally:
        net.close()
