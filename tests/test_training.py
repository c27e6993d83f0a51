"""Tests of training: learning, determinism, checkpoints, resume, interrupts, user errors.

They train a tiny network for one or two epochs on the first images of the
real MNIST files (``$CNNCLI_DATA``, else ``../shared/datasets`` beside the
repository), so each run takes seconds.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import SignalAt, assert_same_weights, needs_mnist, run_main, weights
from rich.console import Console

from cnncli import cli
from cnncli.commands import training
from cnncli.data import DownloadEvent
from cnncli.engine import processes  # the worker processes a split batch runs in (ProcessGroup)
from cnncli.engine.losses import Loss, softmax_cross_entropy
from cnncli.engine.network import Network
from cnncli.engine.rules import MIN_PART
from cnncli.errors import CheckpointError, TrainingStopped, UsageError
from cnncli.model import graph, spec
from cnncli.records import checkpoint, runs, schedule

TINY = """\
name: tiny
input: [1, 28, 28]
classes: 10
train: {optimizer: sgd, lr: 0.05, momentum: 0.9, schedule: cosine, batch_size: 50, epochs: 2, val_size: 100}
layers:
  - conv: {filters: 4, kernel: 5, stride: 2}
  - relu
  - maxpool: {kernel: 2}
  - flatten
  - dropout: {rate: 0.1}
  - dense: {units: 10}
"""


pytestmark = [needs_mnist, pytest.mark.usefixtures("mnist_env")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> training.RunResult:
    """The tiny model's run with the file's settings (2 epochs, seed 0) on 1000 images, uninterrupted."""
    return run(tiny, tmp_path_factory.mktemp("reference") / "run")


def run(model: str, out: Path, reporter=None, limit: int = 1000, **overrides) -> training.RunResult:
    config = training.configure(model, overrides, limit=limit, out=out)
    return training.train(config, reporter)


class StartOf(training.SilentReporter):
    """Keeps the run's :class:`~cnncli.commands.training.RunStart`."""

    run: training.RunStart | None = None

    def start(self, run: training.RunStart) -> None:
        self.run = run


# --------------------------------------------------------------------------- learning

def test_loss_falls_and_accuracy_beats_chance(reference):
    result = reference
    assert result.status == "completed" and result.exit_code == 0
    first, second = result.history
    assert second.train_loss < first.train_loss
    assert result.test_acc > 0.5  # chance is 0.1
    assert result.n_test == 10000
    folder = result.run_dir
    files = {p.name for p in folder.iterdir()}
    assert {"config.yaml", "metrics.csv", "gradients.csv", "last.npz", "best.npz", "test.json"} <= files
    lines = (folder / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                                   "images_per_s", "seconds"]
    assert len(lines) == 3
    ckpt = checkpoint.load(folder / "last.npz")
    assert ckpt.epoch == 2 and ckpt.meta["config"]["limit"] == 1000
    assert "optim.steps" in ckpt.state and "conv1.weight" in ckpt.state


def test_other_seed_gives_other_weights(tiny, tmp_path, reference):
    run(tiny, tmp_path / "c", seed=1, limit=500)
    wa, wc = weights(reference.last_path), weights(tmp_path / "c" / "last.npz")
    assert not np.array_equal(wa["conv1.weight"], wc["conv1.weight"])


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_then_resumed_equals_uninterrupted(tiny, tmp_path, sig, reference):
    whole = reference
    part = run(tiny, tmp_path / "part", reporter=SignalAt(1, 7, sig))
    assert part.status == "interrupted"
    assert part.exit_code == 128 + sig
    saved = checkpoint.load(tmp_path / "part" / "last.npz")
    assert (saved.epoch, saved.meta["batch"]) == (0, 7)
    from cnncli.render import training as render

    buf = io.StringIO()
    render.show_result(part, Console(file=buf, force_terminal=False, width=200))
    name = signal.Signals(sig).name
    assert f"Interrupted by {name} in epoch 1 (step 7 of 18)" in buf.getvalue()
    assert f"--resume {tmp_path / 'part' / 'last.npz'}" in buf.getvalue()
    config = training.configure(tiny, {}, resume=tmp_path / "part" / "last.npz")
    assert config.out == tmp_path / "part"
    resumed = training.train(config)
    assert resumed.status == "completed"
    assert_same_weights(whole.last_path, tmp_path / "part" / "last.npz")
    assert [(r.train_loss, r.val_acc) for r in resumed.history] == [(r.train_loss, r.val_acc) for r in whole.history]
    assert resumed.test_acc == whole.test_acc
    assert len((tmp_path / "part" / "metrics.csv").read_text().splitlines()) == 3
    gradients = (whole.run_dir / "gradients.csv").read_text()
    assert (tmp_path / "part" / "gradients.csv").read_text() == gradients
    assert len(gradients.splitlines()) == 1 + 2 * 2  # header, then epochs × parametrised layers (conv1, dense1)


def test_resume_keeps_settings_but_may_train_longer(tiny, tmp_path, capsys):
    run(tiny, tmp_path / "r", epochs=1, schedule="constant", limit=500)
    last = tmp_path / "r" / "last.npz"
    with pytest.raises(UsageError, match="--lr 0.1 differs"):
        training.configure(tiny, {"lr": 0.1}, resume=last)
    with pytest.raises(UsageError, match="--limit 1000 differs"):
        training.configure(tiny, {}, resume=last, limit=1000)
    with pytest.raises(UsageError, match="--dtype float64 differs from the resumed run's float32"):
        training.configure(tiny, {}, resume=last, dtype="float64")
    assert training.configure(tiny, {}, resume=last, dtype="float32").dtype == "float32"
    assert "--dtype float64 differs" in cli_error(["train", tiny, "--resume", str(last), "--dtype", "float64"],
                                                  capsys)
    started = StartOf()
    longer = training.train(training.configure(tiny, {"epochs": 2}, resume=last), started)
    assert longer.epochs_done == 2 and [r.epoch for r in longer.history] == [1, 2]
    assert started.run.replan is None  # a constant rate is every step's under any plan: nothing to say
    straight = run(tiny, tmp_path / "s", epochs=2, schedule="constant", limit=500)
    assert straight.status == "completed"
    assert_same_weights(tmp_path / "s" / "last.npz", last)


_KILLER = textwrap.dedent("""
    import io, sys, time
    from pathlib import Path
    import numpy as np
    from cnncli import cli

    marker, argv = Path(sys.argv[1]), sys.argv[2:]
    real, calls = np.savez, []

    def torn_savez(file, **arrays):
        # The third checkpoint is epoch 2's last.npz: write half of it, then wait to be killed.
        calls.append(1)
        if len(calls) == 3:
            buf = io.BytesIO()
            real(buf, **arrays)
            file.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            file.flush()
            marker.write_text("writing")
            time.sleep(120)
        real(file, **arrays)

    np.savez = torn_savez
    cli.main(argv)
""")


def test_sigkill_while_checkpointing_keeps_previous_and_resume_continues(tiny, tmp_path, reference):
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    marker, out = tmp_path / "marker", tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(marker), "train", tiny, "--limit", "1000",
                             "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the training run never reached its third checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".last.npz.*.part")), "the torn write should have been in a temporary file"
    survivor = checkpoint.load(out / "last.npz")
    assert survivor.epoch == 1

    resumed = training.train(training.configure(tiny, {}, resume=out / "last.npz"))
    assert resumed.status == "completed" and resumed.epochs_done == 2
    assert not list(out.glob(".*.part"))
    assert_same_weights(reference.last_path, out / "last.npz")


# --------------------------------------------------------------------------- the split path

# TINY has dropout, so its batches are never split (a shared random generator);
# this one has neither dropout nor batch norm, so a fast network splits each
# batch of 64 into parts of at least MIN_PART samples and, as `cnncli train`
# does, runs all parts but the first in worker processes.
SPLIT = """\
name: tiny-split
input: [1, 28, 28]
classes: 10
train: {optimizer: sgd, lr: 0.05, momentum: 0.9, schedule: cosine, batch_size: 64, epochs: 2, val_size: 100}
layers:
  - conv: {filters: 4, kernel: 5}
  - relu
  - maxpool: {kernel: 2}
  - conv: {filters: 6, kernel: 5}
  - tanh
  - avgpool: {kernel: 2}
  - flatten
  - dense: {units: 10}
"""
# 1000 images, 100 of them for validation: 900 training images, 14 batches of 64
# (split) and one of 4 (too small to split) per epoch.
SPLIT_STEPS_PER_EPOCH, SPLIT_BATCHES_PER_EPOCH = 15, 14
BOOT_SECONDS = 60


@pytest.fixture(scope="module")
def split_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("split-model") / "tiny-split.yaml"
    path.write_text(SPLIT)
    g = graph.build(spec.load(str(path)))
    # No dropout or batch norm: on two cores a batch of 64 is split into two parts of 32.
    assert Network(g, "float32", fast=True, workers=2).workers == 2 and 64 // 2 >= MIN_PART
    if Network(g, "float32", fast=True).workers < 2:
        pytest.skip("this process may use one CPU only: a batch is not split")
    if not processes.available():
        pytest.skip("worker processes are not used on this platform (see cnncli.engine.processes.available)")
    return str(path)


class _Parts:
    """Replaces the engine's process group with one that is ready before training starts and counts its steps."""

    def __init__(self):
        self.collected: list[int] = []  # per step handed to the workers: how many parts they sent back
        self.groups = 0
        parts = self

        class Group(processes.ProcessGroup):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                parts.groups += 1
                end = time.monotonic() + BOOT_SECONDS  # so that every step, the first too, goes to them
                while not self.ready():
                    assert time.monotonic() < end, "the worker processes did not start"
                    time.sleep(0.02)

            def collect(self):
                results = super().collect()
                parts.collected.append(len(results))
                return results

        self.group = Group


def run_in_processes(model: str, out: Path, reporter=None,
                     resume: Path | None = None) -> tuple[training.RunResult, _Parts]:
    parts = _Parts()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(processes, "ProcessGroup", parts.group)
        if resume is None:
            result = run(model, out, reporter=reporter)
        else:
            result = training.train(training.configure(model, {}, resume=resume), reporter)
    return result, parts


class Notes(training.SilentReporter):
    def __init__(self, then: training.SilentReporter | None = None):
        self.notes, self.then = [], then

    def step(self, p: training.StepProgress) -> None:
        if self.then is not None:
            self.then.step(p)

    def note(self, text: str) -> None:
        self.notes.append(text)


@pytest.fixture(scope="module")
def split_reference(split_model, tmp_path_factory) -> training.RunResult:
    """tiny-split's uninterrupted run (2 epochs, seed 0, 1000 images) with its parts in worker processes."""
    notes = Notes()
    result, parts = run_in_processes(split_model, tmp_path_factory.mktemp("split-reference") / "run", notes)
    assert result.status == "completed" and result.steps_per_epoch == SPLIT_STEPS_PER_EPOCH
    # Every batch that splits went through the worker processes, none fell back to threads.
    assert parts.groups == 1
    assert len(parts.collected) == 2 * SPLIT_BATCHES_PER_EPOCH and all(n >= 1 for n in parts.collected)
    assert notes.notes == []
    return result


def test_split_batches_in_worker_processes_resume_bit_for_bit(split_model, split_reference, tmp_path):
    whole = split_reference
    assert whole.history[1].train_loss < whole.history[0].train_loss and whole.test_acc > 0.5
    notes = Notes(SignalAt(1, 7))
    part, parts = run_in_processes(split_model, tmp_path / "part", notes)
    assert part.status == "interrupted" and len(parts.collected) == 7
    saved = checkpoint.load(tmp_path / "part" / "last.npz")
    assert (saved.epoch, saved.meta["batch"]) == (0, 7)
    resumed_notes = Notes()
    resumed, parts = run_in_processes(split_model, tmp_path / "part", resumed_notes,
                                      resume=tmp_path / "part" / "last.npz")
    assert resumed.status == "completed" and resumed_notes.notes == []
    assert len(parts.collected) == 2 * SPLIT_BATCHES_PER_EPOCH - 7
    assert_same_weights(whole.last_path, tmp_path / "part" / "last.npz")
    assert [(r.train_loss, r.train_acc, r.val_loss, r.val_acc) for r in resumed.history] == \
        [(r.train_loss, r.train_acc, r.val_loss, r.val_acc) for r in whole.history]
    assert (resumed.test_loss, resumed.test_acc) == (whole.test_loss, whole.test_acc)
    assert not any("threads" in n for n in notes.notes), notes.notes  # no fallback from processes to threads


def test_split_batches_give_the_same_weights_in_processes_as_on_threads(split_model, split_reference, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(processes, "available", lambda: False)  # no worker processes: the parts run on threads
    on_threads = run(split_model, tmp_path / "threads")
    assert_same_weights(split_reference.last_path, on_threads.last_path)
    assert on_threads.test_acc == split_reference.test_acc


# --------------------------------------------------------------------------- checkpoints

def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w.weight": np.ones(3, np.float32)}, {}, {"epoch": 1})

    def broken(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")  # the disk filled up mid-write

    monkeypatch.setattr(checkpoint.np, "savez", broken)
    with pytest.raises(OSError):
        checkpoint.save(path, {"w.weight": np.zeros(3, np.float32)}, {}, {"epoch": 2})
    old = checkpoint.load(path)
    assert old.epoch == 1 and old.weights()["w.weight"].tolist() == [1, 1, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_corrupt_checkpoint_is_a_checkpoint_error(tmp_path):
    good = tmp_path / "good.npz"
    checkpoint.save(good, {"w.weight": np.arange(1000, dtype=np.float32)}, {}, {"epoch": 1})
    torn = tmp_path / "torn.npz"
    torn.write_bytes(good.read_bytes()[:700])
    flipped = tmp_path / "flipped.npz"
    raw = bytearray(good.read_bytes())
    raw[400] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    (tmp_path / "text.npz").write_text("not a checkpoint")
    for bad in ("torn.npz", "flipped.npz", "text.npz", "missing.npz"):
        with pytest.raises(CheckpointError, match="checkpoint"):
            checkpoint.load(tmp_path / bad)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    seen = []

    def poisoned(logits, target):
        # Counted in samples: a batch split into parts calls the loss once per part.
        seen.append(len(target))
        loss, grad = softmax_cross_entropy(logits, target)
        return (float("nan"), grad) if sum(seen) > 1300 else (loss, grad)

    monkeypatch.setattr(training.losses, "get", lambda name: Loss("cross_entropy", poisoned, True))
    with pytest.raises(TrainingStopped, match=r"loss became nan at epoch 2.*last good checkpoint"):
        run(tiny, tmp_path / "nan")  # 900 training samples per epoch (and at most 100 validated): 1300 is in epoch 2
    kept = checkpoint.load(tmp_path / "nan" / "last.npz")
    assert kept.epoch == 1
    assert all(np.all(np.isfinite(v)) for v in kept.weights().values())


# --------------------------------------------------------------------------- user errors at the CLI

def cli_error(argv: list[str], capsys) -> str:
    """The real entry point in-process, which must exit with status 2 (a user's mistake): its stderr."""
    code, out, err = run_main(argv, capsys)
    assert code == 2, (out, err)
    return err


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-0.1"], "--lr must be positive"),
    (["--lr", "0"], "--lr must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--weight-decay", "-1"], "--weight-decay must not be negative"),
    (["--limit", "0"], "--limit must be a positive number"),
    (["--limit", "70000"], "--limit 70000 is more than the 60000 training images"),
])
def test_invalid_flags_exit_2(tiny, tmp_path, capsys, flags, message):
    err = cli_error(["train", tiny, "--out", str(tmp_path / "o"), *flags], capsys)
    assert message in err and "Traceback" not in err


def test_output_folder_problems_exit_2(tiny, tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert "already exists and is not empty" in cli_error(["train", tiny, "--out", str(used)], capsys)
    assert (used / "notes.txt").read_text() == "mine"
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = cli_error(["train", tiny, "--limit", "500", "--out", str(blocker / "run")], capsys)
    assert f"cannot make --out {blocker / 'run'}: {blocker} is a file, not a folder" in err  # before any work


def test_corrupt_resume_checkpoint_exits_2(tiny, tmp_path, capsys):
    bad = tmp_path / "last.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    assert "corrupt" in cli_error(["train", tiny, "--resume", str(bad)], capsys)


def test_default_run_folder_is_never_reused(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = training.configure(tiny, {})
    assert first.out.parent == Path("runs") and first.out.name.startswith("tiny-")
    first.out.mkdir(parents=True)
    (first.out / "last.npz").write_text("")
    second = training.configure(tiny, {})
    assert second.out != first.out and not second.out.exists()


# --------------------------------------------------------------------------- gradient flow

def test_gradient_flow_rows_agree_with_the_update_they_describe(tmp_path):
    """One plain SGD step (no momentum, decay or dropout): W1 = W0 − lr·g, so g = (W0 − W1)/lr per layer."""
    path = tmp_path / "plain-step.yaml"
    path.write_text(TINY.replace("  - dropout: {rate: 0.1}\n", ""))
    lr = 0.05
    result = run(str(path), tmp_path / "run", limit=50, batch_size=50, epochs=1, momentum=0.0,
                 schedule="constant", lr=lr)
    assert result.steps_per_epoch == 1  # 45 training images (5 held out), one batch
    before = Network(graph.build(spec.load(str(path))), "float32", seed=0).params
    after = weights(result.last_path)
    folder = runs.load(result.run_dir)
    assert [(r["epoch"], r["layer"], r["kind"]) for r in folder.gradients] == [(1, "conv1", "conv"),
                                                                               (1, "dense1", "dense")]
    for row in folder.gradients:
        keys = [k for k in before if k.startswith(row["layer"] + ".")]
        w0 = np.sqrt(sum(np.sum(before[k].astype(np.float64) ** 2) for k in keys))
        w1 = np.sqrt(sum(np.sum(after[k].astype(np.float64) ** 2) for k in keys))
        step = np.sqrt(sum(np.sum((before[k].astype(np.float64) - after[k]) ** 2) for k in keys))
        assert row["grad_norm"] == pytest.approx(step / lr, rel=2e-3)
        assert row["update_ratio"] == pytest.approx(step / w0, rel=2e-3)
        assert row["weight_norm"] == pytest.approx(w1, rel=1e-5)


def test_gradient_flow_means_over_steps_against_numpy():
    from cnncli.records.gradflow import GradientFlow, Layer

    rng = np.random.default_rng(3)
    flow = GradientFlow([Layer("a", "conv", ("a.weight", "a.bias")), Layer("b", "dense", ("b.weight",))])
    shapes = {"a.weight": (4, 3, 3, 3), "a.bias": (4,), "b.weight": (5, 2)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    expected = {"a": [0.0, 0.0], "b": [0.0, 0.0]}
    for lr in (0.1, 0.05, 0.2):
        grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        flow.add(grads, params, lr)
        for layer, keys in (("a", ("a.weight", "a.bias")), ("b", ("b.weight",))):
            g = np.linalg.norm(np.concatenate([grads[k].ravel() for k in keys]).astype(np.float64))
            w = np.linalg.norm(np.concatenate([params[k].ravel() for k in keys]).astype(np.float64))
            expected[layer][0] += g / 3
            expected[layer][1] += lr * g / w / 3
    state = flow.state()
    rows = flow.end_epoch(1, params)
    for row in rows:
        assert row["grad_norm"] == pytest.approx(expected[row["layer"]][0], rel=1e-5)
        assert row["update_ratio"] == pytest.approx(expected[row["layer"]][1], rel=1e-5)
    again = GradientFlow(flow.layers)
    again.restore(json.loads(json.dumps(state)))  # as a checkpoint stores it
    assert again.end_epoch(1, params) == rows
    with pytest.raises(ValueError, match="for 2 layers, the model has 1"):
        GradientFlow(flow.layers[:1]).restore(state)


# --------------------------------------------------------------------------- schedules

def test_a_models_settings_for_the_chosen_dataset_sit_between_its_own_and_the_flags(tmp_path):
    path = tmp_path / "per-dataset.yaml"
    path.write_text(TINY.replace("train: {", "train: {dataset: cifar10, datasets: {fashion-mnist: "
                                             "{epochs: 7, weight_decay: 0.0005}}, "))
    own = training.configure(str(path), {}, out=tmp_path / "a")
    assert (own.dataset, own.epochs, own.weight_decay, own.lr) == ("cifar10", 2, 0.0, 0.05)
    chosen = training.configure(str(path), {"dataset": "fashion-mnist"}, out=tmp_path / "b")
    assert (chosen.dataset, chosen.epochs, chosen.weight_decay, chosen.lr) == ("fashion-mnist", 7, 0.0005, 0.05)
    flagged = training.configure(str(path), {"dataset": "fashion-mnist", "epochs": 3}, out=tmp_path / "c")
    assert (flagged.epochs, flagged.weight_decay) == (3, 0.0005)


def test_another_length_changes_the_rates_of_cosine_and_onecycle_alone():
    lr, first_change = schedule.learning_rate, schedule.first_change
    two, four = (schedule.Plan(lr=0.1, epochs=e, steps_per_epoch=20) for e in (2, 4))
    # A finished 2-epoch run trained to 4: at step 40 the 2-epoch cosine has reached 0, the 4-epoch one is
    # half-way, 0.1 · ½(1 + cos(π/2)) = 0.05.
    assert first_change("cosine", two, four, 40) == (40, 0.0, pytest.approx(0.05))
    # A 4-epoch run cut to 2 mid-run: the step resumed at already differs, 0.1 · ½(1 + cos(π · 10/80)) under
    # the 80 steps planned, 0.1 · ½(1 + cos(π · 10/40)) under 40.
    step, before, after = first_change("cosine", four, two, 10)
    assert step == 10 and before == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 8)))
    assert after == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert first_change("onecycle", two, four, 40)[0] == 40
    for name in ("constant", "step"):
        assert first_change(name, two, four, 40) is None and first_change(name, four, two, 3) is None
    # During warm-up both plans ramp alike; they part at the first step after it (21), found between the
    # steps compared (the warm-up's end, 20, and the next epoch's first step, 40).
    warm2, warm4 = (schedule.Plan(lr=0.1, epochs=e, steps_per_epoch=20, warmup_epochs=1) for e in (4, 8))
    assert lr("cosine", warm2, 20) == lr("cosine", warm4, 20)
    assert first_change("cosine", warm2, warm4, 5) == (21, lr("cosine", warm2, 21), lr("cosine", warm4, 21))


def test_schedules():
    plan = schedule.Plan(lr=0.1, epochs=10, steps_per_epoch=100, step_epochs=3, step_gamma=0.5)
    lr = schedule.learning_rate
    assert lr("constant", plan, 0) == lr("constant", plan, 999) == 0.1
    assert lr("step", plan, 299) == 0.1 and lr("step", plan, 300) == 0.05 and lr("step", plan, 900) == 0.0125
    assert lr("cosine", plan, 0) == pytest.approx(0.1)
    assert lr("cosine", plan, 500) == pytest.approx(0.05)
    assert 0 < lr("cosine", plan, 999) < 1e-5
    rates = [lr("onecycle", plan, s) for s in range(1000)]
    assert rates[0] == pytest.approx(0.004) and max(rates) == pytest.approx(0.1, rel=1e-3)
    assert int(np.argmax(rates)) == 300 and rates[-1] < 1e-5
    warm = schedule.Plan(lr=0.1, epochs=10, steps_per_epoch=100, warmup_epochs=1)
    assert lr("cosine", warm, 0) == pytest.approx(0.1 / 101)
    assert lr("cosine", warm, 100) == pytest.approx(0.1)
    assert lr("constant", warm, 49) == pytest.approx(0.05 * 100 / 101)


# --------------------------------------------------------------------------- rendering

def test_plain_reporter_prints_one_line_per_epoch_and_same_seed_gives_same_weights(tiny, tmp_path, reference):
    from cnncli.render import training as render

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=80)
    result = run(tiny, tmp_path / "p", reporter=render.Reporter(console))
    render.show_result(result, console)
    lines = buf.getvalue().splitlines()
    header = [line for line in lines if line.split()[:3] == ["epoch", "train", "loss"]]
    epochs = [line for line in lines if line.split()[:1] in (["1/2"], ["2/2"])]
    assert len(header) == 1 and "img/s" in header[0] and "val loss" in header[0] and len(epochs) == 2
    assert max(len(line) for line in lines) <= 80  # the epochs' table fits a log's 80 columns
    assert any(line.startswith("Test accuracy") for line in lines)
    assert "\r" not in buf.getvalue()
    assert_same_weights(reference.last_path, result.last_path)


def test_terminal_reporter_draws_bars_and_downloads(tiny, tmp_path):
    from cnncli.render import training as render

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    reporter = render.Reporter(console)
    url = "https://example.invalid/train-images-idx3-ubyte.gz"
    for event in (DownloadEvent("start", "train-images-idx3-ubyte.gz", url, 0, 1000),
                  DownloadEvent("progress", "train-images-idx3-ubyte.gz", url, 500, 1000),
                  DownloadEvent("failed", "train-images-idx3-ubyte.gz", url, 0, None, "HTTP 404"),
                  DownloadEvent("start", "train-images-idx3-ubyte.gz", url, 0, 1000),
                  DownloadEvent("done", "train-images-idx3-ubyte.gz", url, 1000, 1000)):
        reporter.download(event)
    result = run(tiny, tmp_path / "t", reporter=reporter, epochs=1, limit=300)
    render.show_result(result, console)
    text = buf.getvalue()
    assert "HTTP 404" in text and "train loss" in text and "Test accuracy" in text


# --------------------------------------------------------------------------- inputs: adaptation and augmentation

COLOUR = """\
name: colour
input: [3, 32, 32]
classes: 10
train: {optimizer: sgd, lr: 0.05, momentum: 0.9, batch_size: 50, epochs: 2, val_size: 100,
        crop_padding: 4, flip: true}
layers:
  - conv: {filters: 4, kernel: 5, stride: 3}
  - relu
  - flatten
  - dense: {units: 10}
"""


@pytest.fixture(scope="module")
def colour(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "colour.yaml"
    path.write_text(COLOUR)
    return str(path)


def test_digits_train_a_colour_network_padded_replicated_and_augmented(colour, tmp_path):
    """MNIST (1×28×28) into a 3×32×32 network; the adaptation and augmentation are in the config and eval applies them."""
    from cnncli.commands import evaluation

    result = run(colour, tmp_path / "run", limit=500)
    assert result.status == "completed" and result.test_acc > 0.3
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert record["input"] == {"dataset_shape": [1, 28, 28], "model_shape": [3, 32, 32],
                               "adaptation": "28×28 padded to 32×32 with zeros, grey replicated into 3 channels",
                               "crop_padding": 4, "flip": False}
    assert record["crop_padding"] == 4 and record["flip"] is False  # the file's flip is not for digits
    scored = evaluation.evaluate(colour, result.last_path, worst=0)
    assert scored.accuracy == pytest.approx(result.test_acc)  # the test set seen the same way, unaugmented


def test_augmented_runs_resume_bit_for_bit(colour, tmp_path):
    whole = run(colour, tmp_path / "whole", limit=500, flip=True)
    part = run(colour, tmp_path / "part", limit=500, reporter=SignalAt(1, 4), flip=True)
    assert part.status == "interrupted"
    resumed = training.train(training.configure(colour, {}, resume=tmp_path / "part" / "last.npz"))
    assert resumed.status == "completed"
    assert_same_weights(whole.last_path, tmp_path / "part" / "last.npz")
    # the draws changed what was learnt: without augmentation the weights differ
    plain = run(colour, tmp_path / "plain", limit=500, crop_padding=0, flip=False)
    assert not np.array_equal(weights(plain.last_path)["conv1.weight"], weights(whole.last_path)["conv1.weight"])


def test_the_header_says_how_images_are_adapted(colour, tmp_path):
    from cnncli.render import training as render

    buf = io.StringIO()
    reporter = render.Reporter(Console(file=buf, force_terminal=False, width=200))
    run(colour, tmp_path / "run", reporter=reporter, limit=200, epochs=1, flip=True)
    assert ("input: 28×28 padded to 32×32 with zeros, grey replicated into 3 channels; augmentation: random crop "
            "after a 4-pixel border, horizontal flip of half the images") in buf.getvalue()


def test_a_model_that_cannot_take_the_images_exits_2(tmp_path, capsys):
    model = tmp_path / "big.yaml"
    model.write_text(COLOUR.replace("input: [3, 32, 32]", "input: [3, 64, 64]"))
    message = cli_error(["train", str(model), "--out", str(tmp_path / "r")], capsys)
    assert "cnncli would have to pad 36 pixels" in message and "resizing is not done" in message


def test_digits_are_not_flipped_unless_asked(colour):
    # the model file asks for flips (the CIFAR recipe); a mirrored digit is not a digit
    assert training.configure(colour, {}).flip is False
    assert training.configure(colour, {"flip": True}).flip is True
    assert training.configure(colour, {"dataset": "fashion-mnist"}).flip is True


def test_terminal_reporter_counts_a_folder_decode_in_files():
    from cnncli.render.downloads import Downloads

    buf = io.StringIO()
    with Downloads(Console(file=buf, force_terminal=True, width=120)) as shown:
        for done in (0, 700, 1500):
            shown(DownloadEvent("start" if done == 0 else "done" if done == 1500 else "progress",
                                "train images", "/pictures", done, 1500, unit="files"))
    text = buf.getvalue()
    assert "decoding train images" in text and "1,500/1,500 files" in text and "MB" not in text


# --------------------------------------------------------------------------- the end of a run, at the CLI

#: A console wide enough that the lines these tests read are not wrapped (output keeps to COLUMNS).
WIDE = "400"


def cli_run(argv: list[str], capsys) -> tuple[int, str]:
    """The real entry point in-process, on a console of WIDE columns: (exit code, stdout)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", WIDE)
        code, out, err = run_main(argv, capsys)
    assert "Traceback" not in err, err
    return code, out


@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> Path:
    """TINY with 3 images held out: on 300 images both epochs validate at 3/3 (seed 0), so best.npz stays at
    epoch 1 while last.npz goes on to epoch 2."""
    path = tmp_path_factory.mktemp("model") / "tied.yaml"
    path.write_text(TINY.replace("val_size: 100", "val_size: 3"))
    return path


def test_train_reports_the_test_accuracy_of_each_checkpoint_as_eval_computes_it(tied, tmp_path, capsys):
    from cnncli.commands import evaluation

    out = tmp_path / "run"
    code, text = cli_run(["train", str(tied), "--limit", "300", "--out", str(out)], capsys)
    assert code == 0
    assert checkpoint.load(out / "best.npz").epoch == 1 and checkpoint.load(out / "last.npz").epoch == 2
    best = evaluation.evaluate(str(tied), out / "best.npz", worst=0)
    last = evaluation.evaluate(str(tied), out / "last.npz", worst=0)
    line = next(line for line in text.splitlines() if line.startswith("Test accuracy"))
    assert line.startswith(f"Test accuracy {100 * best.accuracy:.2f} % (best.npz, epoch 1; loss {best.loss:.4f}) · "
                           f"{100 * last.accuracy:.2f} % (last.npz, epoch 2; loss {last.loss:.4f})"), line
    record = json.loads((out / "test.json").read_text())
    # The keys older readers know stay last.npz's; best.npz's are under "best".
    assert (record["checkpoint"], record["epoch"], record["n"]) == ("last.npz", 2, 10000)
    assert record["accuracy"] == pytest.approx(last.accuracy) and record["loss"] == pytest.approx(last.loss)
    assert (record["best"]["checkpoint"], record["best"]["epoch"]) == ("best.npz", 1)
    assert record["best"]["accuracy"] == pytest.approx(best.accuracy)
    assert record["best"]["loss"] == pytest.approx(best.loss)
    assert runs.load(out).test["accuracy"] == record["accuracy"]
    # eval names the checkpoint's epoch too, in its header and its JSON
    code, text = cli_run(["eval", str(tied), "--checkpoint", str(out / "best.npz"), "--worst", "0"], capsys)
    assert code == 0 and f"{out / 'best.npz'} (epoch 1) · MNIST test (10,000 images)" in text
    assert f"accuracy {100 * best.accuracy:.2f} %" in text
    code, text = cli_run(["eval", str(tied), "--checkpoint", str(out / "last.npz"), "--format", "json"], capsys)
    assert code == 0 and json.loads(text)["epoch"] == 2


def test_one_test_accuracy_when_the_best_epoch_is_the_last(reference):
    from cnncli.render import training as render

    assert reference.best_epoch == 2
    buf = io.StringIO()
    render.show_result(reference, Console(file=buf, force_terminal=False, width=200))
    lines = [line for line in buf.getvalue().splitlines() if line.startswith("Test accuracy")]
    assert lines == [f"Test accuracy {100 * reference.test_acc:.2f} % (best.npz and last.npz, epoch 2; loss "
                     f"{reference.test_loss:.4f}) on 10,000 test images of MNIST"]
    record = json.loads((reference.run_dir / "test.json").read_text())
    assert record["best"] == {"checkpoint": "best.npz", "epoch": 2, "loss": record["loss"],
                              "accuracy": record["accuracy"]}


@pytest.fixture(scope="module")
def one_epoch(tiny, tmp_path_factory) -> tuple[Path, str]:
    """`cnncli train tiny --epochs 1 --limit 300`: its run folder and what it printed."""
    out = tmp_path_factory.mktemp("one-epoch") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", io.StringIO())
        mp.setenv("COLUMNS", WIDE)
        try:
            cli.main(["train", tiny, "--epochs", "1", "--limit", "300", "--out", str(out)])
        except SystemExit as e:
            assert not e.code
        text = sys.stdout.getvalue()
    return out, text


def test_counts_agree_with_their_nouns_and_the_last_line_lists_the_folder(one_epoch):
    out, text = one_epoch
    lines = text.splitlines()
    assert ", batch 50, 1 epoch, seed 0" in lines[1]
    assert "1 epochs" not in text
    assert any(line.startswith("1 epoch in ") for line in lines)
    on_disk = sorted(p.name for p in out.iterdir())
    assert "test.json" in on_disk
    assert lines[-1] == f"run folder {out}: " + ", ".join(runs.listing(out))
    assert sorted(runs.listing(out)) == on_disk


def test_resuming_a_finished_run_says_so_and_changes_nothing(tiny, one_epoch, capsys):
    out, _ = one_epoch
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    for more in ([], ["--epochs", "1"]):
        code, text = cli_run(["train", tiny, "--resume", str(out / "last.npz"), *more], capsys)
        assert code == 0
        assert f"{out} has trained all its 1 epoch already" in text
        assert f"cnncli train {tiny} --resume {out / 'last.npz'} --epochs N (N more than 1)" in text
        assert "Training tiny" not in text and not any(line.split()[:1] == ["1/1"] for line in text.splitlines())
        assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    # the same run told to train longer goes on
    assert training.finished(training.configure(tiny, {"epochs": 2}, resume=out / "last.npz")) is None


def test_resuming_with_another_epochs_warns_of_the_schedules_new_rates(tiny, one_epoch, tmp_path, capsys):
    out, _ = one_epoch
    steps = checkpoint.load(out / "last.npz").step  # the 1-epoch plan's steps, all trained
    code, text = cli_run(["train", tiny, "--resume", str(out / "last.npz"), "--epochs", "2", "--out",
                          str(tmp_path / "longer")], capsys)
    assert code == 0
    # tiny's cosine over 1 epoch has reached 0 at step `steps`; over 2 epochs that step is half-way:
    # 0.05 · ½(1 + cos(π/2)) = 0.025.
    assert ("warning: --epochs 2 changes the run's plan of 1 epoch: its cosine schedule is spread over 2 instead, "
            "so step 1 of epoch 2 trains at learning rate 0.025, where the 1-epoch plan gives 0 (its descent "
            "starts again from part-way)") in text
    assert text.count("warning:") == 1
    # and the epoch trains at the new plan's rates: its last step's is 0.05 · ½(1 + cos(π (2s - 1) / 2s))
    history = checkpoint.load(tmp_path / "longer" / "last.npz").meta["history"]
    assert history[1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * (2 * steps - 1) / (2 * steps))))


def test_resumed_epochs_may_not_end_the_run_before_where_it_stands(tiny, tmp_path, capsys):
    part = run(tiny, tmp_path / "part", reporter=SignalAt(2, 2), limit=300, epochs=2)
    assert part.status == "interrupted"
    last = tmp_path / "part" / "last.npz"
    with pytest.raises(UsageError, match=r"--epochs 1 would end the run inside epoch 2, which .*last.npz is 2 "
                                         r"steps into: give --epochs 2 or more"):
        training.configure(tiny, {"epochs": 1}, resume=last)
    assert "--epochs 1 would end the run inside epoch 2" in cli_error(
        ["train", tiny, "--resume", str(last), "--epochs", "1"], capsys)
    # the run's own plan goes on without a word about it
    assert training.configure(tiny, {"epochs": 2}, resume=last).epochs == 2


# --------------------------------------------------------------------------- a recipe that does not fit the data

def test_a_batch_norm_model_on_a_few_hundred_images_is_warned_before_the_first_epoch(tmp_path, capsys):
    model = tmp_path / "tiny-bn.yaml"
    model.write_text(TINY.replace("  - relu\n", "  - batchnorm\n  - relu\n", 1))
    code, text = cli_run(["train", str(model), "--limit", "216", "--batch-size", "128", "--epochs", "1",
                          "--out", str(tmp_path / "run")], capsys)
    assert code == 0
    lines = text.splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning:"))
    assert warning < next(i for i, line in enumerate(lines) if line.split()[:1] == ["1/1"])
    assert lines[warning].startswith("warning: 195 training images in batches of 128 are 2 steps per epoch: "
                                     "with batch norm, fewer than 10 steps per epoch")
    assert lines[warning].endswith("; --batch-size 16 gives 13 steps per epoch")



def test_resuming_an_older_checkpoint_in_its_own_folder_is_refused_and_a_new_folder_is_offered(tiny, tmp_path,
                                                                                                 capsys):
    """A checkpoint behind the folder's last.npz: resuming it in place would write over the later epochs."""
    out = tmp_path / "run"
    assert cli_run(["train", tiny, "--epochs", "1", "--limit", "300", "--out", str(out)], capsys)[0] == 0
    older = out / "epoch1.npz"
    older.write_bytes((out / "last.npz").read_bytes())
    assert cli_run(["train", tiny, "--resume", str(out / "last.npz"), "--epochs", "2"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UsageError, match="write over the later epochs") as raised:
        training.configure(tiny, {"epochs": 3}, resume=older)
    assert str(out / "last.npz") in str(raised.value) and "--out NEW_FOLDER" in str(raised.value)
    code, _ = cli_run(["train", tiny, "--resume", str(older), "--epochs", "3"], capsys)
    assert code == 2 and {p.name: p.read_bytes() for p in out.iterdir()} == before
    # In a new folder it trains on from epoch 1; the summary names the epochs this invocation ran.
    code, text = cli_run(["train", tiny, "--resume", str(older), "--epochs", "3", "--out", str(tmp_path / "b")],
                         capsys)
    assert code == 0 and any(line.startswith("2 epochs (2–3) in ") for line in text.splitlines()), text
