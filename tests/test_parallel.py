"""Batches split across worker processes: the same numbers as on threads, and no stray processes.

Each test that starts workers waits for them to boot (~0.3-1 s: a fresh
interpreter imports Numba and loads the cached kernels).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cnncli.engine import losses, processes
from cnncli.engine.network import Network
from cnncli.model import graph, spec

SMALL = """
name: small
input: [1, 12, 12]
classes: 4
layers:
  - conv: {filters: 3, kernel: 3, padding: 1}
  - tanh
  - avgpool: {kernel: 2}
  - conv: {filters: 5, kernel: 3}
  - relu
  - flatten
  - dense: {units: 4}
"""

BOOT_SECONDS = 60  # generous: the first boot may compile kernels that are not cached yet


def _pair(dtype: str, workers: int = 2) -> tuple[Network, Network]:
    g = graph.build(spec.parse(SMALL))
    threads = Network(g, dtype, seed=3, fast=True, workers=workers)
    procs = Network(g, dtype, seed=3, fast=True, workers=workers)
    return threads, procs


def _wait_ready(net: Network) -> None:
    end = time.monotonic() + BOOT_SECONDS
    while not net.parts.group.ready():
        assert time.monotonic() < end, "worker processes did not start"
        time.sleep(0.02)


def _batch(n: int, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 12, 12)).astype(dtype), rng.integers(0, 4, n)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_processes_give_the_same_bits_as_threads(dtype):
    threads, procs = _pair(dtype, workers=3)
    procs.spawn_workers(48)
    try:
        assert procs.parts.group is not None and procs.parts.group.children == 2
        _wait_ready(procs)
        loss = losses.get("cross_entropy")
        for step in range(3):  # parameters change between steps: the children must see them
            x, y = _batch(48, dtype, seed=step)
            lt, ot = threads.loss_and_backward(x, y, loss)
            lp, op = procs.loss_and_backward(x, y, loss)
            assert lp == lt and np.array_equal(op, ot)
            assert procs.grads.keys() == threads.grads.keys()
            for k in threads.grads:
                assert np.array_equal(procs.grads[k], threads.grads[k]), k
                threads.params[k] -= 0.1 * threads.grads[k]
                procs.params[k] -= 0.1 * procs.grads[k]
        assert procs.processes_failed is None
        # A smaller batch (two blocks instead of three) does not fit the group: threads take it.
        x, y = _batch(40, dtype)
        assert procs.parts.ready_group(procs.parts.slices(40)) is None
        lt, _ = threads.loss_and_backward(x, y, loss)
        lp, _ = procs.loss_and_backward(x, y, loss)
        assert lp == lt
    finally:
        procs.close()


# Batch norm and dropout: the parts exchange their sums through shared memory and draw per-sample masks.
NORMED = """
name: normed
input: [1, 12, 12]
classes: 4
layers:
  - conv: {filters: 3, kernel: 3, padding: 1, bias: false}
  - batchnorm
  - relu
  - conv: {filters: 5, kernel: 3, stride: 2}
  - batchnorm
  - relu
  - flatten
  - dropout: {rate: 0.3}
  - dense: {units: 4}
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_norm_and_dropout_in_processes_give_the_bits_of_threads_and_the_numbers_of_the_whole(dtype):
    g = graph.build(spec.parse(NORMED))
    threads = Network(g, dtype, seed=5, fast=True, workers=3)
    procs = Network(g, dtype, seed=5, fast=True, workers=3)
    whole = Network(g, dtype, seed=5, fast=True, workers=1)
    procs.spawn_workers(50)
    try:
        _wait_ready(procs)
        loss = losses.get("cross_entropy")
        for step in range(3):
            x, y = _batch(50, dtype, seed=step)  # parts of 16, 17, 17: unequal shares
            lt, ot = threads.loss_and_backward(x, y, loss)
            lp, op = procs.loss_and_backward(x, y, loss)
            lw, ow = whole.loss_and_backward(x, y, loss)
            assert lp == lt and np.array_equal(op, ot)
            tol = {"rtol": 1e-10, "atol": 1e-13} if dtype == "float64" else {"rtol": 2e-4, "atol": 1e-5}
            assert lp == pytest.approx(lw, rel=tol["rtol"]) and np.allclose(op, ow, **tol)
            for k in threads.grads:
                assert np.array_equal(procs.grads[k], threads.grads[k]), k
                assert np.allclose(procs.grads[k], whole.grads[k], **tol), k
                for net in (threads, procs, whole):
                    net.params[k] -= 0.1 * net.grads[k]
            for k in threads.buffers:
                assert np.array_equal(procs.buffers[k], threads.buffers[k]), k
                assert np.allclose(procs.buffers[k], whole.buffers[k], **tol), k
        assert procs.processes_failed is None
    finally:
        procs.close()


@pytest.mark.parametrize("model", [SMALL, NORMED], ids=["per-sample", "batch-norm"])
def test_a_dead_worker_falls_back_to_threads_with_the_same_numbers(model):
    # With batch norm the parent finds out while its part waits for the child's sums: the step runs again.
    g = graph.build(spec.parse(model))
    threads = Network(g, "float64", seed=5, fast=True, workers=2)
    procs = Network(g, "float64", seed=5, fast=True, workers=2)
    procs.spawn_workers(32)
    _wait_ready(procs)
    child = procs.parts.group.procs[0]
    child.kill()
    child.wait()
    loss = losses.get("cross_entropy")
    x, y = _batch(32, "float64")
    lt, _ = threads.loss_and_backward(x, y, loss)
    lp, _ = procs.loss_and_backward(x, y, loss)
    assert lp == lt
    for k in threads.grads:
        assert np.array_equal(procs.grads[k], threads.grads[k]), k
    for k in threads.buffers:  # the running statistics were updated once, not once per attempt
        assert np.array_equal(procs.buffers[k], threads.buffers[k]), k
    assert procs.processes_failed is not None and "worker process 1" in procs.processes_failed
    assert procs.parts.group is None


def test_workers_ignore_ctrl_c_and_close_reaps_them():
    _, procs = _pair("float32")
    procs.spawn_workers(32)
    _wait_ready(procs)
    child = procs.parts.group.procs[0]
    os.kill(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends the whole process group
    os.kill(child.pid, signal.SIGTERM)
    x, y = _batch(32, "float32")
    procs.loss_and_backward(x, y, losses.get("cross_entropy"))
    assert procs.processes_failed is None and child.poll() is None
    procs.close()
    assert child.poll() is not None


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    # The parent prints its worker's pid once the worker runs, then waits to be killed.
    script = textwrap.dedent(f"""
        import sys, time
        from cnncli.model import graph, spec
        from cnncli.engine.network import Network
        net = Network(graph.build(spec.parse({SMALL!r})), "float32", fast=True, workers=2)
        net.spawn_workers(32)
        while not net.parts.group.ready():
            time.sleep(0.02)
        print(net.parts.group.procs[0].pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A child of the killed parent is reparented; it is gone once it has exited and been reaped.
        if _is_zombie(pid):
            return
        time.sleep(0.05)
    pytest.fail(f"worker process {pid} outlived its parent")


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_worker_that_cannot_start_is_reported(monkeypatch):
    _, procs = _pair("float32")
    monkeypatch.setattr(processes.sys, "executable", "/nonexistent/python")
    procs.spawn_workers(32)
    assert procs.parts.group is None and "cannot start worker processes" in procs.processes_failed
    x, y = _batch(32, "float32")
    value, _ = procs.loss_and_backward(x, y, losses.get("cross_entropy"))  # threads do it
    assert np.isfinite(value)


def test_no_workers_for_batches_that_are_not_split():
    threads, _ = _pair("float32", workers=1)
    threads.spawn_workers(256)
    assert threads.parts is None
    _, procs = _pair("float32")
    procs.spawn_workers(16)  # too small to split (MIN_PART samples a block)
    assert procs.parts.group is None


def test_workers_import_this_cnncli_whatever_the_working_directory(tmp_path, monkeypatch):
    # A folder named cnncli in the working directory (another checkout, say) must not be imported.
    fake = tmp_path / "cnncli"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the wrong cnncli')\n")
    monkeypatch.chdir(tmp_path)
    _, procs = _pair("float32")
    procs.spawn_workers(32)
    try:
        _wait_ready(procs)
    finally:
        procs.close()


def test_a_batch_is_split_only_across_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # as under `taskset -c 0`
    net = Network(graph.build(spec.parse(SMALL)), "float32", fast=True)
    assert net.workers == 1
    net.spawn_workers(64)
    assert net.parts is None
