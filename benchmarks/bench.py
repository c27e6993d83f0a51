"""cnncli against PyTorch on the same CPU, in one invocation: throughput, time, memory, start-up.

Run from the repository root (MNIST under $CNNCLI_DATA or --data-dir)::

    python benchmarks/bench.py                      # every workload, 3 runs each
    python benchmarks/bench.py train64 infer -r 5   # some workloads, 5 runs
    python benchmarks/bench.py --json out.json      # raw numbers too

Workloads (see benchmarks/README.md for what each measures and the numbers):

``train64``, ``train256``
    LeNet-5 training on MNIST at batch 64 / 256: SGD with momentum 0.9,
    weight decay 5e-4, the cosine rate of ``models/lenet5.yaml``, softmax
    cross-entropy, batches gathered from a per-epoch shuffle. cnncli runs its
    real training loop (:func:`cnncli.training.train`); PyTorch the same loop
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

Every measurement runs in a fresh worker process (``--worker``), cnncli and
PyTorch alternating, so neither inherits the other's threads, caches or
memory. Torch is optional: without it only cnncli's numbers are shown.
PyTorch runs twice per round: as installed, and with ``OMP_WAIT_POLICY=PASSIVE``
(what cnncli sets for its own OpenMP threads), because its spinning OpenMP
threads collapse (to a few hundred images/s) whenever another process holds a
core; for training, also bare (above). The fastest configuration is the baseline. The ratio is cnncli's speed over
that baseline (above 1: cnncli is faster) and, for memory, cnncli's peak over
PyTorch's. The machine is shared: the load average is printed with every
result, and medians over runs are reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("train64", "train256", "infer", "vgg", "startup")
TORCH_WORKLOADS = ("train64", "train256", "infer", "vgg")

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


def _warm(times: list[float]) -> int:
    """Index of the last warm-up step: at least WARMUP_STEPS steps and WARMUP_SECONDS."""
    for i in range(WARMUP_STEPS - 1, len(times)):
        if times[i] - times[0] >= WARMUP_SECONDS:
            return i
    return len(times)


def _measured(times: list[float]) -> bool:
    """Whether the run has its warm-up and MEASURE_SECONDS after it."""
    w = _warm(times)
    return w < len(times) and times[-1] - times[w] > MEASURE_SECONDS


def _windows(times: list[float], images: list[int]) -> list[float]:
    """Images/s in WINDOWS equal windows of the steps after warm-up (times[i] = end of step i)."""
    w = _warm(times)
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

def cnncli_train(batch: int) -> dict:
    from cnncli import training

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
            if _measured(times):
                raise KeyboardInterrupt  # the run ends as "aborted"; nothing else to do

    with tempfile.TemporaryDirectory() as tmp:
        cfg = training.configure("lenet5", {"epochs": 20, "batch_size": batch},
                                 data_dir=os.environ.get("BENCH_DATA_DIR") or None, out=Path(tmp) / "run")
        training.train(cfg, Timer())
    rates = _windows(times, seen)
    return {"images_per_s": statistics.median(rates), "windows": rates, "steps": len(times)}


def cnncli_infer() -> dict:
    from cnncli import data
    from cnncli.engine.network import Network
    from cnncli.model import spec
    from cnncli.model.graph import build

    images, _ = _mnist("test")
    x = data.normalise(images, "float32", "mnist")
    net = Network(build(spec.load("lenet5"), aux=False), "float32", seed=0, fast=True)  # as `cnncli eval`
    net.predict(x, EVAL_BATCH)
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        net.predict(x, EVAL_BATCH)
        ts.append(time.perf_counter() - t)
    return {"images_per_s": len(x) / statistics.median(ts), "seconds": statistics.median(ts)}


def cnncli_vgg() -> dict:
    import numpy as np

    from cnncli.engine import losses
    from cnncli.engine.network import Network
    from cnncli.model import spec
    from cnncli.model.graph import build

    net = Network(build(spec.load("vgg16"), aux=False), "float32", seed=0, fast=True)  # as `cnncli train`
    loss = losses.get("cross_entropy")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    y = np.array([3])
    base = _vm("VmRSS")
    _reset_peak()
    ts = []
    for _ in range(4):
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
    n = len(images) - 5000
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
            if _measured(times):
                rates = _windows(times, seen)
                return {"images_per_s": statistics.median(rates), "windows": rates, "steps": len(times)}
    raise AssertionError("unreachable")


def torch_infer() -> dict:
    import numpy as np
    import torch

    from cnncli import data

    images, _ = _mnist("test")
    x = torch.from_numpy(data.normalise(images, np.float32, "mnist"))
    net = _torch_lenet().eval()

    def run():
        with torch.inference_mode():
            return torch.cat([net(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])

    run()
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t)
    return {"images_per_s": len(x) / statistics.median(ts), "seconds": statistics.median(ts)}


def torch_vgg() -> dict:
    import torch

    torch.manual_seed(0)
    net = _torch_vgg16()
    lossf = torch.nn.CrossEntropyLoss()
    x = torch.randn(1, 3, 224, 224)
    y = torch.tensor([3])
    base = _vm("VmRSS")
    _reset_peak()
    ts = []
    for _ in range(4):
        t = time.perf_counter()
        net.zero_grad(set_to_none=True)
        lossf(net(x), y).backward()
        ts.append(time.perf_counter() - t)
    return {"seconds": statistics.median(ts[1:]), "first": ts[0], "peak_mb": _vm("VmHWM"), "base_mb": base}


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
}


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
    return "—" if v is None else f"{v:,.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workloads", nargs="*", default=list(WORKLOADS), help=", ".join(WORKLOADS))
    ap.add_argument("-r", "--runs", type=int, default=3, help="worker processes per framework and workload")
    ap.add_argument("--no-torch", action="store_true", help="measure cnncli only")
    ap.add_argument("--data-dir", help="folder with mnist/ (default: $CNNCLI_DATA)")
    ap.add_argument("--clean-openblas-env", action="store_true",
                    help=f"unset {' and '.join(OPENBLAS_OVERRIDES)} for the measured processes")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(WORKERS[tuple(args.worker)]()))
        return 0

    for w in args.workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    env = dict(os.environ)
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

    results: dict = {"machine": info, "runs": {}}
    rows = []
    for w in args.workloads:
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
        got: dict[str, list[dict]] = {f: [] for f in fws}
        for _ in range(args.runs):
            for f in fws:
                r = run_worker(f, w, env)
                got[f].append(r)
                detail = (f"{r['images_per_s']:,.0f} img/s" if "images_per_s" in r
                          else f"{r['seconds']:.3f} s, peak {r['peak_mb']:,.0f} MB")
                print(f"  {w:9s} {f:13s} {detail}   (load {r['load']:.2f})", flush=True)
        results["runs"][w] = got
        med = {f: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
               for f, rs in got.items()}
        # The baseline: whichever PyTorch configuration was faster.
        torch_fws = [f for f in fws if f != "cnncli"]
        if torch_fws:
            metric = "seconds" if w == "vgg" else "images_per_s"
            sign = -1 if w == "vgg" else 1
            best = max(torch_fws, key=lambda f, m=med: sign * m[f][metric])
            med["torch"] = med[best]
            results.setdefault("baseline", {})[w] = best
        if w == "vgg":
            c = med["cnncli"]
            t = med.get("torch")
            ratio = f"{c['seconds'] / t['seconds']:.2f}x time, {c['peak_mb'] / t['peak_mb']:.2f}x memory" if t else ""
            rows.append(("VGG-16 fwd+bwd, 1 image",
                         f"{c['seconds']:.3f} s, {c['peak_mb']:,.0f} MB",
                         f"{t['seconds']:.3f} s, {t['peak_mb']:,.0f} MB" if t else "—", ratio,
                         "≤ 1.5x time, ≤ 2x memory"))
        else:
            c = med["cnncli"]["images_per_s"]
            t = med["torch"]["images_per_s"] if "torch" in med else None
            name = {"train64": "LeNet-5 train, batch 64", "train256": "LeNet-5 train, batch 256",
                    "infer": "LeNet-5 inference, batch 1000"}[w]
            rows.append((name, f"{_fmt_rate(c)} img/s", f"{_fmt_rate(t)} img/s" if t else "—",
                         f"{c / t:.2f}x" if t else "", "≥ 1.5x"))
    print()
    print("| workload | cnncli | PyTorch | ratio | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
