"""cnncli against PyTorch on the same CPU, in one invocation: throughput, time, memory, start-up.

Run from the repository root (MNIST under $CNNCLI_DATA or --data-dir)::

    python benchmarks/bench.py                      # the classic workloads, 3 runs each
    python benchmarks/bench.py train64 infer -r 5   # some workloads, 5 runs
    python benchmarks/bench.py modern -r 1          # the modern CNNs (``all``: everything)
    python benchmarks/bench.py resnet20 --smoke     # tiny shapes: checks the harness in seconds
    python benchmarks/bench.py --json out.json      # raw numbers too
    python benchmarks/bench.py train64 resnet20 --engines   # cnncli's Numba engine against its torch engine

Workloads (see benchmarks/README.md for what each measures and the numbers):

``train64``, ``train256``
    LeNet-5 training on MNIST at batch 64 / 256: SGD with momentum 0.9,
    weight decay 5e-4, the cosine rate of ``models/lenet5.yaml``, softmax
    cross-entropy, batches gathered from a per-epoch shuffle. cnncli runs its
    real training loop (:func:`cnncli.commands.training.train`); PyTorch the same loop
    written the idiomatic fast way (one float32 tensor, ``x[idx]`` batches),
    reading back the loss and the hit count every step as cnncli does, and
    once more without that read-back (``torch-bare``, the least work PyTorch
    can do per step). Throughput is measured after a warm-up (20 steps and
    2 s, which covers the boot of cnncli's worker processes) over about 4 s,
    split into 5 windows; the median window counts. The pause at the end of
    an epoch (cnncli's validation and checkpoint) is left out.
``infer``
    LeNet-5 inference over the 10,000 MNIST test images in batches of 1000
    (what ``cnncli eval`` and the training's scoring do); PyTorch under
    ``torch.inference_mode()``. Median of 7 passes after one warm-up.
``vgg``
    VGG-16 forward + backward (loss gradient for every parameter, no
    optimizer step) of one 3x224x224 image; median of 3 after one warm-up.
    Memory is the process's peak resident set (VmHWM) while the passes run,
    reset after the model is built, so that one-off start-up peaks (weight
    initialisation) do not count; both frameworks are measured this way.
``startup``
    cnncli only, warm (caches filled by a discarded first run): wall time of
    ``cnncli --help`` and ``cnncli summarize vgg16``, and the time from
    launching ``cnncli train lenet5 --epochs 1`` until its first batch starts.

Modern CNNs (the group ``modern``; synthetic data, no dataset needed). PyTorch
runs the same network: :func:`torch_network` translates the cnncli graph node
by node and copies cnncli's initial weights in (a test checks loss, gradients
and inference output against cnncli's in float64).

``resnet20``, ``resnet20-mnist``, ``resnet56``, ``vgg11bn``
    Training of models/resnet20.yaml (3x32x32, or 1x28x28 for
    ``resnet20-mnist``), resnet56.yaml and vgg11-bn.yaml at batch 128: SGD
    momentum 0.9, weight decay 5e-4, constant rate 0.1, softmax
    cross-entropy, float32, 4 fixed batches of standard-normal images and
    uniform labels, cycled. cnncli: ``Network(fast=True)`` with its worker
    processes spawned first, ``loss_and_backward`` + the SGD step; PyTorch:
    ``zero_grad(set_to_none=True)``, forward, backward, ``step``. Both read
    the loss back every step. Images/s in 5 windows after a warm-up of 3 steps
    and 3 s (the worker processes have booted), over at least 8 s and 5 steps;
    the median window counts.
``resnet18``, ``googlenet``
    Forward + backward (no optimizer step) of a batch of 8 3x224x224 images,
    median of 3 after one warm-up, peak memory as for ``vgg``. GoogLeNet keeps
    its two auxiliary heads on both sides, as ``cnncli train`` does: loss =
    main + 0.3 x each auxiliary head's, dropout active.
``finetune-resnet18``
    Fine-tuning as ``cnncli train resnet18 --weights imagenet --freeze backbone``
    on a 10-class dataset runs it (:mod:`cnncli.records.freeze`): a fresh 10-unit head,
    every other layer frozen; steps of SGD as above on batches of 32
    3x224x224 images (the batch and size ``infer-resnet18`` runs, so that a
    step can be set against a forward pass of the same batch). Only the head
    learns; the frozen batch norms normalise with their running statistics and
    keep them. cnncli: its optimizer holds ``net.trainable()`` (the head) and its
    backward pass stops at the head; PyTorch: the backbone's parameters with
    ``requires_grad`` False and its modules in eval mode, only ``fc`` in the
    optimizer, so autograd records nothing before the head. Images/s in windows
    as for the training workloads above.
``infer-resnet20``, ``infer-resnet56``, ``infer-vgg11bn``, ``infer-vgg16``, ``infer-resnet18``, ``infer-resnet50``,
``infer-googlenet``
    Inference (batch norm with running statistics, dropout off, no auxiliary
    heads) of each network above over synthetic images: the 32x32 networks
    in batches of 1000 (10,000 images for ResNet-20, 4,000 for the others),
    the 224x224 ones in batches of 32 (64 images for VGG-16, 128 for
    ResNet-18, ResNet-50 and GoogLeNet; ResNet-50's 1x1 bottleneck convolutions
    are the layers no other workload has): cnncli's ``predict``, PyTorch's ``eval()`` under
    ``inference_mode``; median of 3 passes after one batch as warm-up.

``infer-yolo-mnist``, ``infer-yolo-mnist-1``, ``infer-yolo-mnist-1core``
    The detector models/yolo-mnist.yaml (1x96x96, its raw yolo head: decoding
    and non-maximum suppression are post-processing, the same on both sides)
    in inference as above: batches of 32 over 640 images, batches of 1 over
    200 images (real time: a camera's frames one at a time), and batches of 1
    on one core (one Numba thread, one PyTorch thread).

Every modern workload also reports GFLOPS: the graph's multiply-accumulates per
image (``cnncli summarize``: conv and dense layers) x 2, x 3 for training and
forward + backward (x 1 for inference), x images/s; with frozen layers, the
forward pass of every layer plus x 2 for the backward pass of the layers that learn.

``--engines`` runs cnncli's own loop twice per round, on the Numba engine and on
``train --engine torch`` (PyTorch computes the passes of the module ``export
--to torch`` writes; data, loss and optimizer stay cnncli's), for the LeNet-5
training and modern-CNN workloads, and reports their ratio.

Every measurement runs in a fresh worker process (``--worker``), cnncli and
PyTorch alternating, so neither inherits the other's threads, caches or
memory. Torch is optional: without it only cnncli's numbers are shown.
PyTorch runs twice per round: as installed, and with ``OMP_WAIT_POLICY=PASSIVE``
(what cnncli sets for its own OpenMP threads), because its spinning OpenMP
threads collapse (to a few hundred images/s) whenever another process holds a
core; for LeNet-5 training, also bare (above). The fastest configuration is the
baseline. The ratio is cnncli's speed over that baseline (above 1: cnncli is faster) and, for memory, cnncli's peak over
PyTorch's. The machine is shared: the load average is printed with every
result, and medians over runs are reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CLASSIC_WORKLOADS = ("train64", "train256", "infer", "vgg", "startup")
MODERN_WORKLOADS = ("resnet20", "resnet20-mnist", "resnet56", "vgg11bn", "resnet18", "googlenet", "finetune-resnet18",
                    "infer-resnet20",
                    "infer-resnet56", "infer-vgg11bn", "infer-vgg16", "infer-resnet18", "infer-resnet50",
                    "infer-googlenet", "infer-yolo-mnist", "infer-yolo-mnist-1", "infer-yolo-mnist-1core")
WORKLOADS = CLASSIC_WORKLOADS + MODERN_WORKLOADS
# Names on the command line that stand for several workloads; no workload names means "classic".
GROUPS = {"classic": CLASSIC_WORKLOADS, "modern": MODERN_WORKLOADS, "all": WORKLOADS}
TORCH_WORKLOADS = ("train64", "train256", "infer", "vgg") + MODERN_WORKLOADS
# Workloads measured in seconds per pass (with peak memory), the others in images/s.
PASS_WORKLOADS = ("vgg", "resnet18", "googlenet")
LABELS = {
    "train64": "LeNet-5 train, batch 64", "train256": "LeNet-5 train, batch 256",
    "infer": "LeNet-5 inference, batch 1000", "vgg": "VGG-16 fwd+bwd, 1 image",
    "resnet20": "ResNet-20 train, batch 128", "resnet20-mnist": "ResNet-20 train (1×28×28), batch 128",
    "resnet56": "ResNet-56 train, batch 128", "vgg11bn": "VGG-11-BN train, batch 128",
    "resnet18": "ResNet-18 fwd+bwd, batch 8", "googlenet": "GoogLeNet fwd+bwd (aux heads), batch 8",
    "finetune-resnet18": "ResNet-18 fine-tune (frozen backbone, 10-class head), batch 32",
    "infer-resnet20": "ResNet-20 inference, batch 1000", "infer-resnet56": "ResNet-56 inference, batch 1000",
    "infer-vgg11bn": "VGG-11-BN inference, batch 1000", "infer-vgg16": "VGG-16 inference, batch 32",
    "infer-resnet18": "ResNet-18 inference, batch 32", "infer-resnet50": "ResNet-50 inference, batch 32",
    "infer-googlenet": "GoogLeNet inference, batch 32",
    "infer-yolo-mnist": "yolo-mnist detector inference, batch 32",
    "infer-yolo-mnist-1": "yolo-mnist detector inference, batch 1",
    "infer-yolo-mnist-1core": "yolo-mnist detector inference, batch 1, one core",
}
TARGETS = {"train64": "≥ 1.5x", "train256": "≥ 1.5x", "infer": "≥ 1.5x", "vgg": "≤ 1.5x time, ≤ 2x memory"}

WARMUP_STEPS = 20
# cnncli's worker processes boot in the background (about 0.3-1 s) while the
# first steps run on threads; a real run lasts minutes, so the warm-up covers it.
WARMUP_SECONDS = 2.0
MEASURE_SECONDS = 4.0
WINDOWS = 5
EVAL_BATCH = 1000

# Some machines set these for old OpenBLAS builds; --clean-openblas-env drops
# them for the worker processes only (see README).
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# --------------------------------------------------------------------------- helpers (workers)

def _vm(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Pace(NamedTuple):
    """When a training run's measurement starts and ends: a warm-up of at least ``warm_steps`` steps and
    ``warm_seconds``, then at least ``measure_seconds`` and ``min_steps`` steps."""

    warm_steps: int
    warm_seconds: float
    measure_seconds: float
    min_steps: int = 1


LENET_PACE = Pace(WARMUP_STEPS, WARMUP_SECONDS, MEASURE_SECONDS)
# A modern CNN's step at batch 128 takes a fraction of a second to seconds: a warm-up of 3 steps and
# 3 s (cnncli's worker processes are running by then), then at least 8 s and one step per window.
MODERN_PACE = Pace(3, 3.0, 8.0, WINDOWS)


def _warm(times: list[float], pace: Pace = LENET_PACE) -> int:
    """Index of the last warm-up step: at least ``pace.warm_steps`` steps and ``pace.warm_seconds``."""
    for i in range(pace.warm_steps - 1, len(times)):
        if times[i] - times[0] >= pace.warm_seconds:
            return i
    return len(times)


def _measured(times: list[float], pace: Pace = LENET_PACE) -> bool:
    """Whether the run has its warm-up and the measurement after it."""
    w = _warm(times, pace)
    return (w < len(times) and len(times) - 1 - w >= pace.min_steps
            and times[-1] - times[w] >= pace.measure_seconds)


def _windows(times: list[float], images: list[int], pace: Pace = LENET_PACE) -> list[float]:
    """Images/s in WINDOWS equal windows of the steps after warm-up (times[i] = end of step i)."""
    w = _warm(times, pace)
    t, n = times[w:], images[w:]
    steps = len(t) - 1
    per = max(1, steps // WINDOWS)
    out = []
    for w in range(WINDOWS):
        a, b = w * per, min((w + 1) * per, steps)
        if b <= a:
            break
        out.append((n[b] - n[a]) / (t[b] - t[a]))
    return out


def _mnist(split: str):
    from cnncli import data

    images, labels = data.load("mnist", split, os.environ.get("BENCH_DATA_DIR") or None)
    return images, labels


# --------------------------------------------------------------------------- cnncli workers

def cnncli_train(batch: int, engine: str = "numba") -> dict:
    from cnncli.commands import training

    times: list[float] = []
    seen: list[int] = []
    pause = [0.0]

    class Timer(training.SilentReporter):
        def step(self, p):
            now = time.perf_counter() - pause[0]
            if p.batch == 1 and times:
                # A new epoch: leave out the previous one's end (validation, checkpoint),
                # counting the gap as one ordinary step.
                typical = (times[-1] - times[0]) / max(len(times) - 1, 1)
                pause[0] += now - times[-1] - typical
                now = times[-1] + typical
            times.append(now)
            seen.append((seen[-1] if seen else 0) + batch)
            if _measured(times, pace):
                raise KeyboardInterrupt  # the run ends as "aborted"; nothing else to do

    pace = _lenet_pace()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = training.configure("lenet5", {"epochs": 20, "batch_size": batch},
                                 data_dir=os.environ.get("BENCH_DATA_DIR") or None, out=Path(tmp) / "run",
                                 engine=engine, limit=SMOKE_LENET_IMAGES if _smoke() else None)
        training.train(cfg, Timer())
    rates = _windows(times, seen, pace)
    return {"images_per_s": statistics.median(rates), "windows": rates, "steps": len(times)}


def cnncli_infer() -> dict:
    from cnncli import data
    from cnncli.engine.network import Network
    from cnncli.model import spec
    from cnncli.model.graph import build

    images, _ = _mnist("test")
    x = data.normalise(images, "float32", "mnist")[:SMOKE_LENET_IMAGES if _smoke() else None]
    batch = SMOKE_LENET_IMAGES // 2 if _smoke() else EVAL_BATCH
    net = Network(build(spec.load("lenet5"), aux=False), "float32", seed=0, fast=True)  # as `cnncli eval`
    net.predict(x, batch)
    ts = []
    for _ in range(2 if _smoke() else 7):
        t = time.perf_counter()
        net.predict(x, batch)
        ts.append(time.perf_counter() - t)
    return {"images_per_s": len(x) / statistics.median(ts), "seconds": statistics.median(ts)}


def cnncli_vgg() -> dict:
    import numpy as np

    from cnncli.engine import losses
    from cnncli.engine.network import Network
    from cnncli.model import spec
    from cnncli.model.graph import build

    shape = SMOKE_VGG_INPUT if _smoke() else (3, 224, 224)
    net = Network(build(spec.load("vgg16"), shape, aux=False), "float32", seed=0, fast=True)  # as `cnncli train`
    loss = losses.get("cross_entropy")
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    y = np.array([3])
    base = _vm("VmRSS")
    _reset_peak()
    ts = []
    for _ in range(2 if _smoke() else 4):
        t = time.perf_counter()
        net.loss_and_backward(x, y, loss)
        ts.append(time.perf_counter() - t)
    return {"seconds": statistics.median(ts[1:]), "first": ts[0], "peak_mb": _vm("VmHWM"), "base_mb": base}


# --------------------------------------------------------------------------- torch workers

def _torch_lenet():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))


def _torch_vgg16():
    from torch import nn

    layers, c = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(),
        nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))


def torch_train(batch: int, readback: bool = True) -> dict:
    import math

    import numpy as np
    import torch

    from cnncli import (
        data,  # only to read the same files the same way (no engine import)
    )

    torch.manual_seed(0)
    images, labels = _mnist("train")
    # The same split sizes as cnncli's run (5,000 images held out for validation).
    n = SMOKE_LENET_IMAGES if _smoke() else len(images) - 5000
    pace = _lenet_pace()
    x_all = torch.from_numpy(data.normalise(images[:n], np.float32, "mnist"))
    y_all = torch.from_numpy(labels[:n].astype(np.int64))
    net = _torch_lenet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    lossf = torch.nn.CrossEntropyLoss()
    steps = math.ceil(n / batch)
    times: list[float] = []
    seen: list[int] = []
    step = 0
    for epoch in itertools.count():
        order = torch.from_numpy(np.random.default_rng([0, 2, epoch]).permutation(n))
        for b in range(steps):
            idx = order[b * batch:(b + 1) * batch]
            xb, yb = x_all[idx], y_all[idx]
            for g in opt.param_groups:  # the cosine rate of lenet5.yaml, per step
                g["lr"] = 0.05 * 0.5 * (1 + math.cos(math.pi * step / (20 * steps)))
            opt.zero_grad(set_to_none=True)
            out = net(xb)
            loss = lossf(out, yb)
            loss.backward()
            opt.step()
            if readback:
                # what cnncli's loop also does every step: the loss and the hit count as Python numbers
                float(loss)
                int((out.argmax(1) == yb).sum())
            step += 1
            times.append(time.perf_counter())
            seen.append(step * batch)
            if _measured(times, pace):
                rates = _windows(times, seen, pace)
                return {"images_per_s": statistics.median(rates), "windows": rates, "steps": len(times)}
    raise AssertionError("unreachable")


def torch_infer() -> dict:
    import numpy as np
    import torch

    from cnncli import data

    images, _ = _mnist("test")
    x = torch.from_numpy(data.normalise(images, np.float32, "mnist"))[:SMOKE_LENET_IMAGES if _smoke() else None]
    batch = SMOKE_LENET_IMAGES // 2 if _smoke() else EVAL_BATCH
    net = _torch_lenet().eval()

    def run():
        with torch.inference_mode():
            return torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)])

    run()
    ts = []
    for _ in range(2 if _smoke() else 7):
        t = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t)
    return {"images_per_s": len(x) / statistics.median(ts), "seconds": statistics.median(ts)}


def torch_vgg() -> dict:
    import torch

    torch.manual_seed(0)
    net = _torch_vgg16()
    lossf = torch.nn.CrossEntropyLoss()
    x = torch.randn(1, *(SMOKE_VGG_INPUT if _smoke() else (3, 224, 224)))
    y = torch.tensor([3])
    base = _vm("VmRSS")
    _reset_peak()
    ts = []
    for _ in range(2 if _smoke() else 4):
        t = time.perf_counter()
        net.zero_grad(set_to_none=True)
        lossf(net(x), y).backward()
        ts.append(time.perf_counter() - t)
    return {"seconds": statistics.median(ts[1:]), "first": ts[0], "peak_mb": _vm("VmHWM"), "base_mb": base}


# --------------------------------------------------------------------------- modern CNNs: shared


class Modern(NamedTuple):
    """A modern-CNN workload: a built-in model, its input (None: the file's), batch, and what runs.

    ``mode``: ``train`` (steps of SGD, throughput in windows), ``pass`` (forward + backward, no
    optimizer step, seconds per pass and peak memory) or ``infer`` (eval mode over ``images``).
    ``classes``: the heads sized to that many classes, as ``train`` sizes them to a dataset's
    (:mod:`cnncli.model.head`); ``freeze``: the layers that do not learn, as ``train --freeze`` says;
    ``threads``: the threads each engine may use (None: all the cores).
    """

    model: str
    input: tuple[int, ...] | None
    batch: int
    mode: str
    images: int = 0
    classes: int | None = None
    freeze: str | None = None
    threads: int | None = None


MODERN = {
    "resnet20": Modern("resnet20", None, 128, "train"),
    "resnet20-mnist": Modern("resnet20", (1, 28, 28), 128, "train"),
    "resnet56": Modern("resnet56", None, 128, "train"),
    "vgg11bn": Modern("vgg11-bn", None, 128, "train"),
    "resnet18": Modern("resnet18", None, 8, "pass"),
    "googlenet": Modern("googlenet", None, 8, "pass"),
    "finetune-resnet18": Modern("resnet18", None, 32, "train", classes=10, freeze="backbone"),
    "infer-resnet20": Modern("resnet20", None, EVAL_BATCH, "infer", 10_000),
    "infer-resnet56": Modern("resnet56", None, EVAL_BATCH, "infer", 4_000),
    "infer-vgg11bn": Modern("vgg11-bn", None, EVAL_BATCH, "infer", 4_000),
    "infer-vgg16": Modern("vgg16", None, 32, "infer", 64),
    "infer-resnet18": Modern("resnet18", None, 32, "infer", 128),
    "infer-resnet50": Modern("resnet50", None, 32, "infer", 128),
    "infer-googlenet": Modern("googlenet", None, 32, "infer", 128),
    "infer-yolo-mnist": Modern("yolo-mnist", None, 32, "infer", 640),
    "infer-yolo-mnist-1": Modern("yolo-mnist", None, 1, "infer", 200),
    "infer-yolo-mnist-1core": Modern("yolo-mnist", None, 1, "infer", 200, threads=1),
}
# Tiny shapes for `--smoke` (and the tests): the same code paths in seconds, numbers meaningless
# (the classic workloads' are SMOKE_LENET_IMAGES and SMOKE_VGG_INPUT). Training keeps 32 samples so that cnncli still splits the batch into two parts.
SMOKE = {
    "resnet20": Modern("resnet20", (3, 16, 16), 32, "train"),
    "resnet20-mnist": Modern("resnet20", (1, 12, 12), 32, "train"),
    "resnet56": Modern("resnet56", (3, 8, 8), 32, "train"),
    "vgg11bn": Modern("vgg11-bn", None, 32, "train"),
    "resnet18": Modern("resnet18", (3, 64, 64), 2, "pass"),
    "googlenet": Modern("googlenet", (3, 64, 64), 2, "pass"),
    "finetune-resnet18": Modern("resnet18", (3, 32, 32), 32, "train", classes=10, freeze="backbone"),
    "infer-resnet20": Modern("resnet20", (3, 16, 16), 32, "infer"),
    "infer-resnet56": Modern("resnet56", (3, 8, 8), 32, "infer"),
    "infer-vgg11bn": Modern("vgg11-bn", None, 8, "infer"),
    "infer-vgg16": Modern("vgg16", (3, 32, 32), 2, "infer"),
    "infer-resnet18": Modern("resnet18", (3, 64, 64), 2, "infer"),
    "infer-resnet50": Modern("resnet50", (3, 64, 64), 2, "infer"),
    "infer-googlenet": Modern("googlenet", (3, 64, 64), 2, "infer"),
    "infer-yolo-mnist": Modern("yolo-mnist", None, 4, "infer"),
    "infer-yolo-mnist-1": Modern("yolo-mnist", None, 1, "infer"),
    "infer-yolo-mnist-1core": Modern("yolo-mnist", None, 1, "infer", threads=1),
}
TRAIN_LR = 0.1
TRAIN_MOMENTUM = 0.9
TRAIN_WEIGHT_DECAY = 5e-4
FIXED_BATCHES = 4       # synthetic training batches, cycled
PASSES = 3              # measured forward + backward or inference passes, after one warm-up


# The classic workloads' tiny shapes: LeNet-5 on this many MNIST images, VGG-16 on this input.
SMOKE_LENET_IMAGES = 256
SMOKE_VGG_INPUT = (3, 32, 32)


def _smoke() -> bool:
    return os.environ.get("BENCH_SMOKE") == "1"


def _lenet_pace() -> Pace:
    return Pace(1, 0.0, 0.0, 2) if _smoke() else LENET_PACE


def _modern(name: str) -> Modern:
    return (SMOKE if _smoke() else MODERN)[name]


def _pace() -> Pace:
    return Pace(1, 0.0, 0.0, 2) if _smoke() else MODERN_PACE


def _graph(w: Modern, aux: bool = True):
    """The workload's cnncli graph (no engine import: the PyTorch workers build it too).

    Training and forward + backward keep the auxiliary heads, as ``cnncli train`` does; inference
    leaves them out, as ``cnncli eval`` does. The heads and the frozen layers as ``cnncli train``
    makes them (:class:`Modern`).
    """
    from cnncli.model import head, spec
    from cnncli.model.graph import build
    from cnncli.records import freeze

    model_spec = spec.load(w.model)
    if w.classes is not None:
        model_spec = head.resize(model_spec, w.classes).spec
    frozen = freeze.choose(model_spec, w.freeze).layers if w.freeze is not None else frozenset()
    return build(model_spec, w.input, aux=aux, frozen=frozen)


def _flops_per_image(graph, mode: str) -> float:
    """Floating-point operations per image: 2 per multiply-accumulate of the graph (conv and dense,
    ``cnncli summarize``'s count), times 3 for forward + backward (the input and the weight gradient
    each cost about a forward pass), times 1 for inference. Frozen layers have no backward pass: the
    forward pass counts for every layer, the two gradients for the others."""
    if mode == "infer":
        return graph.macs * 2
    return graph.macs * 2 + sum(n.macs for n in graph.nodes if not n.frozen) * 2 * 2


def _synthetic(graph, batch: int, count: int, seed: int = 0):
    """``count`` fixed batches of standard-normal images and uniform labels (float32, int64)."""
    import numpy as np

    rng = np.random.default_rng([seed, batch])
    classes = graph.output_shape[0]
    xs = [rng.standard_normal((batch, *graph.input_shape), dtype=np.float32) for _ in range(count)]
    ys = [rng.integers(0, classes, batch).astype(np.int64) for _ in range(count)]
    return xs, ys


def _heads(graph, train: bool) -> list[tuple[str, float]]:
    """The nodes cnncli's softmax cross-entropy reads, with their weights: the main output (and, while
    training, the auxiliary ones), each the logits in front of a final softmax if it has one (as
    ``cnncli.engine.losses.Loss.source``; mirrored here so that the PyTorch workers never import
    the engine, whose import configures thread pools)."""
    heads = {graph.output: 1.0, **(graph.aux_outputs if train else {})}
    out: dict[str, float] = {}
    for name, weight in heads.items():
        node = graph[name]
        source = node.inputs[0] if node.kind == "softmax" else name
        out[source] = out.get(source, 0.0) + weight
    return list(out.items())


def _initial_params(graph, dtype: str = "float32", seed: int = 0) -> dict:
    """The initial parameters ``Network(graph, dtype, seed)`` draws, without building the network.

    The same calls in the same order as :class:`cnncli.engine.network.Network` (one generator
    seeded with ``seed``, parameters in node order); a test holds the two equal.
    """
    import numpy as np

    from cnncli.engine.init import initial_value  # numpy only: no Numba, no thread settings

    rng = np.random.default_rng(seed)
    return {f"{n.name}.{k}": initial_value(n, k, rng, np.dtype(dtype)) for n in graph.nodes for k in n.params}


def _rate_result(graph, w: Modern, times: list[float], seen: list[int], losses: list[float]) -> dict:
    rates = _windows(times, seen, _pace())
    ips = statistics.median(rates)
    flops = _flops_per_image(graph, w.mode)
    return {"images_per_s": ips, "gflops": ips * flops / 1e9, "windows": rates, "steps": len(times),
            "batch": w.batch, "macs_per_image": graph.macs, "loss_first": losses[0], "loss_last": losses[-1]}


def _pass_result(graph, w: Modern, ts: list[float], base: float, loss: float) -> dict:
    seconds = statistics.median(ts[1:])
    return {"seconds": seconds, "first": ts[0], "gflops": w.batch * _flops_per_image(graph, w.mode) / seconds / 1e9,
            "peak_mb": _vm("VmHWM"), "base_mb": base, "batch": w.batch, "macs_per_image": graph.macs, "loss": loss}


def _infer_result(graph, n: int, ts: list[float]) -> dict:
    seconds = statistics.median(ts)
    ips = n / seconds
    return {"images_per_s": ips, "gflops": ips * _flops_per_image(graph, "infer") / 1e9, "seconds": seconds,
            "passes": ts, "macs_per_image": graph.macs}


# --------------------------------------------------------------------------- modern CNNs: cnncli workers

def cnncli_modern(name: str, engine: str = "numba") -> dict:
    import numpy as np

    from cnncli.engine import losses, optim
    from cnncli.engine.network import Network

    w = _modern(name)
    graph = _graph(w, aux=w.mode != "infer")
    if engine == "torch":
        from cnncli.exchange.torch_engine import TorchNetwork

        net = TorchNetwork(graph, _graph(w, aux=False), w.model, "float32", seed=0)
    else:
        net = Network(graph, "float32", seed=0, fast=True)
    loss = losses.get("cross_entropy")
    try:
        if w.mode == "train":
            xs, ys = _synthetic(graph, w.batch, FIXED_BATCHES)
            net.spawn_workers(w.batch)  # boots in the background; threads run the parts meanwhile
            opt = optim.make("sgd", net.trainable(), TRAIN_LR, momentum=TRAIN_MOMENTUM,
                             weight_decay=TRAIN_WEIGHT_DECAY)
            pace = _pace()
            times: list[float] = []
            seen: list[int] = []
            values: list[float] = []
            for i in itertools.count():
                value, _ = net.loss_and_backward(xs[i % FIXED_BATCHES], ys[i % FIXED_BATCHES], loss)
                opt.step(net.grads)
                times.append(time.perf_counter())
                seen.append((i + 1) * w.batch)
                values.append(float(value))
                if _measured(times, pace):
                    break
            return _rate_result(graph, w, times, seen, values) | {"processes_failed": net.processes_failed}
        if w.mode == "pass":
            (x,), (y,) = _synthetic(graph, w.batch, 1)
            base = _vm("VmRSS")
            _reset_peak()
            ts = []
            for _ in range(1 + PASSES):
                t = time.perf_counter()
                value, _ = net.loss_and_backward(x, y, loss)
                ts.append(time.perf_counter() - t)
            return _pass_result(graph, w, ts, base, float(value))
        n = 2 * w.batch if _smoke() else w.images
        x = np.random.default_rng(1).standard_normal((n, *graph.input_shape), dtype=np.float32)
        net.predict(x[:w.batch], w.batch)  # warm-up: one batch
        ts = []
        for _ in range(PASSES):
            t = time.perf_counter()
            net.predict(x, w.batch)
            ts.append(time.perf_counter() - t)
        return _infer_result(graph, n, ts)
    finally:
        net.close()


# --------------------------------------------------------------------------- modern CNNs: PyTorch

def torch_network(graph, params: dict | None = None, buffers: dict | None = None, dtype: str = "float32"):
    """A ``torch.nn.Module`` that computes cnncli's ``graph``, node by node, with cnncli's parameters.

    ``params``/``buffers``: arrays keyed like cnncli's (``<node>.weight``, ``<node>.running_mean``),
    copied in (default: the initial values cnncli draws with seed 0; running statistics 0 and 1).
    Dense weights are transposed: cnncli lays them out (in, out), ``nn.Linear`` (out, in).

    Frozen layers (:attr:`cnncli.model.graph.Node.frozen`) learn nothing here either: their parameters
    do not require gradients, and they stay in eval mode when the module is put in training mode.

    ``module(x, names)`` returns the outputs of the nodes ``names`` (default: the main output) and runs
    only the nodes they depend on. Each value is dropped after its last reader, and a ReLU whose input
    nothing else reads (and whose input's backward does not need its own output) runs in place, as
    torchvision's networks do, so that PyTorch's memory is what an idiomatic model of it would use.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    from cnncli.model.graph import ancestors

    tdtype = getattr(torch, dtype)
    params = _initial_params(graph, dtype) if params is None else params
    buffers = buffers or {}
    readers: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    ends = {graph.output, *graph.aux_outputs}

    def holder(channels: int) -> nn.Module:
        """A module holding per-channel ``weight`` and ``bias`` (LeNet-5 (1998) subsampling)."""
        m = nn.Module()
        m.weight = nn.Parameter(torch.empty(channels))
        m.bias = nn.Parameter(torch.empty(channels))
        return m

    def make(node) -> tuple[nn.Module | None, object]:
        """(the module holding the node's parameters or None, fn(list of inputs) -> output)."""
        o, kind, shape_in = node.options, node.kind, node.in_shapes[0]
        if kind == "conv":
            m = nn.Conv2d(shape_in[0], o["filters"], o["kernel"], o["stride"], o["padding"], o["dilation"],
                          o["groups"], bias=o["bias"])
            if o["connections"] is None:
                return m, lambda xs: m(xs[0])
            m.register_buffer("mask", torch.tensor(o["connections"])[:, :, None, None])
            return m, lambda xs: F.conv2d(xs[0], m.weight * m.mask, m.bias, m.stride, m.padding, m.dilation)
        if kind == "dense":
            m = nn.Linear(shape_in[0], o["units"], bias=o["bias"])
            return m, lambda xs: m(xs[0])
        if kind == "batchnorm":
            bn = nn.BatchNorm2d if len(shape_in) == 3 else nn.BatchNorm1d
            m = bn(shape_in[0], eps=o["eps"], momentum=o["momentum"])
            return m, lambda xs: m(xs[0])
        if kind == "subsample":
            m = holder(shape_in[0])
            k, s, p = o["kernel"], o["stride"] or o["kernel"], o["padding"]
            area = k[0] * k[1]
            return m, lambda xs: (F.avg_pool2d(xs[0], k, s, p, count_include_pad=True) * area
                                  * m.weight[None, :, None, None] + m.bias[None, :, None, None])
        if kind == "relu":
            src = node.inputs[0]
            inplace = (readers[src] == 1 and src != "input" and src not in ends
                       and graph[src].kind in ("conv", "batchnorm", "add", "dense"))
            return None, (lambda xs: F.relu_(xs[0])) if inplace else (lambda xs: F.relu(xs[0]))
        simple = {
            "leaky_relu": lambda xs: F.leaky_relu(xs[0], o["slope"]),
            "sigmoid": lambda xs: torch.sigmoid(xs[0]),
            "tanh": lambda xs: torch.tanh(xs[0]),
            "softmax": lambda xs: torch.softmax(xs[0], 1),
            "flatten": lambda xs: torch.flatten(xs[0], 1),
            "global_avgpool": lambda xs: xs[0].mean((2, 3)),
            "add": lambda xs: sum(xs[1:], xs[0]),
            "concat": lambda xs: torch.cat(xs, 1),
        }
        if kind == "yolo":  # the raw head, as export writes it
            return None, lambda xs: xs[0]
        if kind in simple:
            return None, simple[kind]
        if kind == "shortcut_pad":
            # He et al.'s option A as cnncli's ShortcutPad: x[:, :, ::sh, ::sw], then zero channels after.
            (sh, sw), extra = o["stride"], o["channels"] - shape_in[0]
            return None, lambda xs: F.pad(xs[0][:, :, ::sh, ::sw], (0, 0, 0, 0, 0, extra))
        if kind == "maxpool":
            m = nn.MaxPool2d(o["kernel"], o["stride"] or o["kernel"], o["padding"], ceil_mode=o["ceil_mode"])
        elif kind == "avgpool":
            m = nn.AvgPool2d(o["kernel"], o["stride"] or o["kernel"], o["padding"], ceil_mode=o["ceil_mode"],
                             count_include_pad=o["count_include_pad"])
        elif kind == "adaptive_avgpool":
            m = nn.AdaptiveAvgPool2d(o["output"])
        elif kind == "dropout":
            m = nn.Dropout(o["rate"])
        elif kind == "lrn":
            m = nn.LocalResponseNorm(o["size"], o["alpha"], o["beta"], o["k"])
        else:
            raise NotImplementedError(f"no PyTorch translation for layer kind {kind!r}")
        return m, lambda xs: m(xs[0])

    class GraphModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.graph = graph
            self.holders = nn.ModuleDict()  # keys: node index (node names hold dots)
            self.ops = []
            for i, node in enumerate(graph.nodes):
                m, fn = make(node)
                if m is not None:
                    self.holders[str(i)] = m
                self.ops.append((node.name, node.inputs, fn))
            self._plans: dict[tuple[str, ...], list] = {}

        def train(self, mode: bool = True):
            # Frozen layers (train --freeze) stay in eval mode: batch norm with its running statistics,
            # left as they are, as cnncli's engine runs them (cnncli.records.freeze).
            super().train(mode)
            for i, node in enumerate(graph.nodes):
                if node.frozen and str(i) in self.holders:
                    self.holders[str(i)].eval()
            return self

        def plan(self, names: tuple[str, ...]) -> list:
            if names not in self._plans:
                keep = ancestors({n.name: n.inputs for n in graph.nodes}, list(names))
                ops = [op for op in self.ops if op[0] in keep]
                last: dict[str, int] = {}
                for i, (_, inputs, _) in enumerate(ops):
                    for name in inputs:
                        last[name] = i
                self._plans[names] = [(name, inputs, fn, [v for v in set(inputs) if last[v] == i
                                                            and v not in names])
                                      for i, (name, inputs, fn) in enumerate(ops)]
            return self._plans[names]

        def forward(self, x, names=None):
            names = tuple(names or (graph.output,))
            values = {"input": x}
            for name, inputs, fn, drop in self.plan(names):
                values[name] = fn([values[i] for i in inputs])
                for v in drop:
                    del values[v]
            return [values[n] for n in names]

    module = GraphModule().to(tdtype)
    with torch.no_grad():
        for i, node in enumerate(graph.nodes):
            m = module.holders[str(i)] if str(i) in module.holders else None
            for suffix in node.params:
                value = np.asarray(params[f"{node.name}.{suffix}"])
                if node.kind == "dense" and suffix == "weight":
                    value = value.T
                getattr(m, suffix).copy_(torch.from_numpy(np.ascontiguousarray(value)))
                getattr(m, suffix).requires_grad_(node.trainable)
            for suffix in node.buffers:
                key = f"{node.name}.{suffix}"
                if key in buffers:
                    getattr(m, suffix).copy_(torch.from_numpy(np.asarray(buffers[key])))
    return module


def torch_loss(module, x, y, train: bool = True):
    """Softmax cross-entropy as cnncli's loss_and_backward computes it: the main output's, plus each
    auxiliary output's times its weight while training."""
    import torch.nn.functional as F

    heads = _heads(module.graph, train)
    outs = module(x, [name for name, _ in heads])
    terms = [F.cross_entropy(out, y) * weight if weight != 1.0 else F.cross_entropy(out, y)
             for out, (_, weight) in zip(outs, heads)]
    return sum(terms[1:], terms[0])


def torch_modern(name: str) -> dict:
    import torch

    torch.manual_seed(0)
    w = _modern(name)
    graph = _graph(w, aux=w.mode != "infer")
    net = torch_network(graph)
    if w.mode == "train":
        xs, ys = _synthetic(graph, w.batch, FIXED_BATCHES)
        xs, ys = [torch.from_numpy(x) for x in xs], [torch.from_numpy(y) for y in ys]
        # Only what learns: frozen layers' parameters do not require gradients (torch_network), and are
        # left out of the optimizer as a fine-tuning script leaves them out.
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=TRAIN_LR,
                              momentum=TRAIN_MOMENTUM, weight_decay=TRAIN_WEIGHT_DECAY)
        pace = _pace()
        times: list[float] = []
        seen: list[int] = []
        values: list[float] = []
        net.train()
        for i in itertools.count():
            opt.zero_grad(set_to_none=True)
            loss = torch_loss(net, xs[i % FIXED_BATCHES], ys[i % FIXED_BATCHES])
            loss.backward()
            opt.step()
            values.append(loss.item())  # what cnncli's step returns: the loss as a Python number
            times.append(time.perf_counter())
            seen.append((i + 1) * w.batch)
            if _measured(times, pace):
                break
        return _rate_result(graph, w, times, seen, values)
    if w.mode == "pass":
        (x,), (y,) = _synthetic(graph, w.batch, 1)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        net.train()
        base = _vm("VmRSS")
        _reset_peak()
        ts = []
        for _ in range(1 + PASSES):
            t = time.perf_counter()
            net.zero_grad(set_to_none=True)
            loss = torch_loss(net, x, y)
            loss.backward()
            value = loss.item()
            ts.append(time.perf_counter() - t)
        return _pass_result(graph, w, ts, base, value)
    import numpy as np

    n = 2 * w.batch if _smoke() else w.images
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((n, *graph.input_shape), dtype=np.float32))
    net.eval()

    def run(images):
        with torch.inference_mode():
            return torch.cat([net(images[i:i + w.batch])[0] for i in range(0, len(images), w.batch)])

    run(x[:w.batch])
    ts = []
    for _ in range(PASSES):
        t = time.perf_counter()
        run(x)
        ts.append(time.perf_counter() - t)
    return _infer_result(graph, n, ts)


# --------------------------------------------------------------------------- start-up (cnncli only)

_FIRST_BATCH = r"""
import os, sys, time
import cnncli.engine.network as network
original = network.Network.loss_and_backward
def first(self, *a, **k):
    os.write(2, f"FIRST_BATCH {time.time()!r}\n".encode())
    os._exit(0)
network.Network.loss_and_backward = first
from cnncli.cli import main
sys.argv = ["cnncli", "train", "lenet5", "--epochs", "1", "--out", sys.argv[1]]
main()
"""


def _cnncli_cmd() -> list[str]:
    exe = shutil.which("cnncli")
    return [exe] if exe else [sys.executable, "-m", "cnncli"]


def _wall(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def _first_batch(env: dict) -> float:
    # The import-time hook only notices the first batch; `cnncli train` runs as usual up to it.
    # (The hook is loaded through `python -c`, which starts like the console script.)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", _FIRST_BATCH, str(Path(tmp) / "run")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    for line in proc.stderr.splitlines():
        if line.startswith("FIRST_BATCH "):
            return float(line.split()[1]) - t0
    raise RuntimeError(f"train never reached its first batch:\n{proc.stderr[-2000:]}")


def startup(runs: int, env: dict) -> dict:
    cmds = {"help": _cnncli_cmd() + ["--help"], "summarize": _cnncli_cmd() + ["summarize", "vgg16"]}
    out: dict[str, list[float]] = {k: [] for k in (*cmds, "first_batch")}
    for k, cmd in cmds.items():
        _wall(cmd, env)  # warm the file cache
        out[k] = [_wall(cmd, env) for _ in range(runs)]
    _first_batch(env)  # compiles (or loads) the kernels' cache
    out["first_batch"] = [_first_batch(env) for _ in range(runs)]
    return {k: statistics.median(v) for k, v in out.items()} | {"runs": out}


# --------------------------------------------------------------------------- driver

WORKERS = {
    ("cnncli", "train64"): lambda: cnncli_train(64),
    ("cnncli", "train256"): lambda: cnncli_train(256),
    ("cnncli", "infer"): cnncli_infer,
    ("cnncli", "vgg"): cnncli_vgg,
    ("torch", "train64"): lambda: torch_train(64),
    ("torch", "train256"): lambda: torch_train(256),
    ("torch-bare", "train64"): lambda: torch_train(64, readback=False),
    ("torch-bare", "train256"): lambda: torch_train(256, readback=False),
    ("torch", "infer"): torch_infer,
    ("torch", "vgg"): torch_vgg,
    **{("cnncli", w): (lambda w=w: cnncli_modern(w)) for w in MODERN_WORKLOADS},
    **{("torch", w): (lambda w=w: torch_modern(w)) for w in MODERN_WORKLOADS},
    # cnncli's own loop on its PyTorch engine (train --engine torch), for --engines.
    ("cnncli-torch", "train64"): lambda: cnncli_train(64, engine="torch"),
    ("cnncli-torch", "train256"): lambda: cnncli_train(256, engine="torch"),
    **{("cnncli-torch", w): (lambda w=w: cnncli_modern(w, engine="torch")) for w in MODERN_WORKLOADS},
}
#: Workloads --engines compares (the Numba engine against cnncli's torch engine).
ENGINE_WORKLOADS = ("train64", "train256") + tuple(w for w in MODERN_WORKLOADS if not w.startswith("infer-"))


def _load() -> float:
    return os.getloadavg()[0]


def run_worker(framework: str, workload: str, env: dict) -> dict:
    load = _load()
    if framework == "torch-passive":
        framework, env = "torch", {**env, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, __file__, "--worker", framework, workload], env=env,
                          capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} {workload} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load"] = load
    return result


def machine() -> dict:
    info = {"python": platform.python_version(), "cores": os.cpu_count()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    for mod in ("numpy", "numba", "torch"):
        try:
            info[mod] = __import__(mod).__version__ if importlib.util.find_spec(mod) else None
        except Exception:  # noqa: BLE001
            info[mod] = None
    info["openblas_env"] = {k: os.environ[k] for k in OPENBLAS_OVERRIDES if k in os.environ}
    return info


def _fmt_rate(v):
    return "—" if v is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def _fmt_gflops(r: dict) -> str:
    return f", {r['gflops']:.1f} GFLOPS" if "gflops" in r else ""


def _detail(r: dict, pass_workload: bool) -> str:
    """One result (a run's, or the medians) as the table shows it."""
    if pass_workload:
        return f"{r['seconds']:.3f} s, {r['peak_mb']:,.0f} MB{_fmt_gflops(r)}"
    return f"{_fmt_rate(r['images_per_s'])} img/s{_fmt_gflops(r)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workloads", nargs="*", default=["classic"],
                    help=f"{', '.join(WORKLOADS)}; or the groups {', '.join(GROUPS)} (default: classic)")
    ap.add_argument("-r", "--runs", type=int, default=3, help="worker processes per framework and workload")
    ap.add_argument("--no-torch", action="store_true", help="measure cnncli only")
    ap.add_argument("--data-dir", help="folder with mnist/ (default: $CNNCLI_DATA)")
    ap.add_argument("--clean-openblas-env", action="store_true",
                    help=f"unset {' and '.join(OPENBLAS_OVERRIDES)} for the measured processes")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--engines", action="store_true",
                    help="compare cnncli's engines (Numba against --engine torch) instead of cnncli against PyTorch")
    ap.add_argument("--smoke", action="store_true",
                    help="every workload at tiny shapes and a few steps: checks the harness, numbers meaningless")
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        threads = MODERN.get(args.worker[1], Modern("", None, 0, "")).threads
        if threads is not None:  # before either engine starts its thread pools
            import numba

            numba.set_num_threads(threads)
            if args.worker[0] == "torch":
                import torch

                torch.set_num_threads(threads)
        print(json.dumps(WORKERS[tuple(args.worker)]()))
        return 0

    for w in args.workloads:
        if w not in WORKLOADS and w not in GROUPS:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)} or {', '.join(GROUPS)}")
    workloads = list(dict.fromkeys(x for w in args.workloads for x in GROUPS.get(w, (w,))))
    env = dict(os.environ)
    if args.smoke:
        env["BENCH_SMOKE"] = "1"
    if args.data_dir:
        env["BENCH_DATA_DIR"] = args.data_dir
    if args.clean_openblas_env:
        for k in OPENBLAS_OVERRIDES:
            env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    have_torch = importlib.util.find_spec("torch") is not None and not args.no_torch
    info = machine()
    print(f"machine: {info.get('cpu', '?')}, {info['cores']} cores; python {info['python']}, "
          f"numpy {info['numpy']}, numba {info['numba']}, torch {info['torch'] if have_torch else '(not used)'}")
    if info["openblas_env"]:
        print(f"OpenBLAS overrides in the environment: {info['openblas_env']}"
              + (" (unset for the workers)" if args.clean_openblas_env else ""))

    results: dict = {"machine": info, "smoke": args.smoke, "runs": {}, "medians": {}}
    rows = []
    for w in workloads:
        if w == "startup":
            s = startup(max(args.runs, 5), env)
            results["runs"]["startup"] = s
            print(f"startup  --help {s['help']:.3f} s   summarize vgg16 {s['summarize']:.3f} s   "
                  f"train lenet5: first batch after {s['first_batch']:.2f} s   (load {_load():.2f})")
            rows.append(("`cnncli --help`", f"{s['help']:.3f} s", "", "", "< 0.3 s"))
            rows.append(("`cnncli summarize vgg16`", f"{s['summarize']:.3f} s", "", "", "< 1 s"))
            rows.append(("`train lenet5 --epochs 1`, first batch", f"{s['first_batch']:.2f} s", "", "", "< 2 s"))
            continue
        fws = ["cnncli", "torch", "torch-passive"] if have_torch and w in TORCH_WORKLOADS else ["cnncli"]
        if have_torch and w.startswith("train"):
            fws.append("torch-bare")
        if args.engines:
            if w not in ENGINE_WORKLOADS or not have_torch:
                ap.error(f"--engines compares {', '.join(ENGINE_WORKLOADS)} and needs torch")
            fws = ["cnncli", "cnncli-torch"]
        got: dict[str, list[dict]] = {f: [] for f in fws}
        per_pass = w in PASS_WORKLOADS
        for _ in range(args.runs):
            for f in fws:
                r = run_worker(f, w, env)
                got[f].append(r)
                note = f"   worker processes failed: {r['processes_failed']}" if r.get("processes_failed") else ""
                if not math.isfinite(r.get("loss_last", 0.0)):
                    note += "   the loss is no longer finite"
                print(f"  {w:14s} {f:13s} {_detail(r, per_pass)}   (load {r['load']:.2f}){note}", flush=True)
        results["runs"][w] = got
        med = {f: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
               for f, rs in got.items()}
        # The baseline: whichever PyTorch configuration was faster.
        torch_fws = [f for f in fws if f != "cnncli"]
        if torch_fws:
            metric = "seconds" if per_pass else "images_per_s"
            sign = -1 if per_pass else 1
            best = max(torch_fws, key=lambda f, m=med: sign * m[f][metric])
            med["torch"] = med[best]
            results.setdefault("baseline", {})[w] = best
        results["medians"][w] = med
        c = med["cnncli"]
        t = med.get("torch")
        if per_pass:
            ratio = f"{c['seconds'] / t['seconds']:.2f}x time, {c['peak_mb'] / t['peak_mb']:.2f}x memory" if t else ""
        else:
            ratio = f"{c['images_per_s'] / t['images_per_s']:.2f}x" if t else ""
        label = LABELS[w] + (" [smoke: tiny shapes]" if args.smoke and w != "startup" else "")
        rows.append((label, _detail(c, per_pass), _detail(t, per_pass) if t else "—", ratio,
                     TARGETS.get(w, "")))
    print()
    if args.engines:
        print("Numba engine against cnncli's torch engine (images/s ratio above 1, or time ratio below 1: the "
              "Numba engine is faster)")
    print("| workload | cnncli | PyTorch | ratio | target |" if not args.engines
          else "| workload | Numba engine | torch engine | ratio | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
