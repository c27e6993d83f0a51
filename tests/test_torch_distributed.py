"""``train --engine torch --nproc N``: data-parallel processes (gloo) equal one process; a lost one stops the run
with a checkpoint that resumes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import DATA, needs_mnist, run_main, weights

from cnncli.commands import training
from cnncli.errors import UsageError
from cnncli.records import checkpoint

torch = pytest.importorskip("torch")
from cnncli.exchange import torch_distributed  # noqa: E402  (after the skip: it needs the extra)

pytestmark = needs_mnist

# 540 training images in batches of 49: the last batch holds one image, so one process gets none.
COMMON = {"epochs": 2, "batch_size": 49}
LIMIT = 600


@pytest.fixture(autouse=True)
def env(monkeypatch):
    monkeypatch.setenv("CNNCLI_DATA", str(DATA))
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def _close(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], rtol=2e-4, atol=2e-6, err_msg=key)


def test_two_processes_train_as_one_does(tmp_path):
    one = training.train(training.configure("lenet5", COMMON, limit=LIMIT, out=tmp_path / "one", engine="torch"))
    two = training.train(training.configure("lenet5", COMMON, limit=LIMIT, out=tmp_path / "two", engine="torch",
                                            nproc=2))
    assert two.status == "completed" and two.config.nproc == 2
    _close(one.last_path, two.last_path)
    assert two.test_acc == pytest.approx(one.test_acc, abs=2e-3)
    assert [round(r.train_loss, 4) for r in two.history] == [round(r.train_loss, 4) for r in one.history]


class KillWorker(training.SilentReporter):
    """Kills the data-parallel worker process after step ``batch`` of epoch 1."""

    def __init__(self, batch: int):
        self.batch, self.done = batch, False

    def step(self, p: training.StepProgress) -> None:
        if (p.epoch, p.batch) == (1, self.batch) and not self.done:
            self.done = True
            for child in multiprocessing.active_children():
                if child.name.startswith("cnncli-worker"):
                    os.kill(child.pid, signal.SIGKILL)


def test_a_lost_worker_stops_the_run_with_a_checkpoint_that_resumes(tmp_path):
    config = training.configure("lenet5", COMMON, limit=LIMIT, out=tmp_path / "run", engine="torch", nproc=2)
    stopped = training.train(config, KillWorker(3))
    assert stopped.status == "stopped" and stopped.exit_code == 1 and "process stopped" in stopped.reason
    saved = checkpoint.load(stopped.last_path)
    assert (saved.epoch, saved.meta["batch"]) == (0, 3)  # the state before the step that failed
    resumed = training.train(training.configure("lenet5", {}, resume=stopped.last_path, nproc=1))
    assert resumed.status == "completed"
    whole = training.train(training.configure("lenet5", COMMON, limit=LIMIT, out=tmp_path / "whole", engine="torch"))
    _close(whole.last_path, resumed.last_path)


def test_the_group_comes_from_torchruns_variables(monkeypatch):
    assert torch_distributed.from_environment() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    group = torch_distributed.from_environment()
    assert (group.rank, group.world, group.init, group.lead) == (1, 4, "env://", False)
    assert [group.shard(10) for _ in range(1)] == [slice(2, 5)]
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UsageError, match="RANK 4 is not a process of WORLD_SIZE 4"):
        torch_distributed.from_environment()
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(UsageError, match="must be integers"):
        torch_distributed.from_environment()


def test_torchrun_starts_the_processes_and_process_0_writes_the_run(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "cnncli", "train", "lenet5", "--engine", "torch", "--epochs", "1", "--limit", "300",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("Test accuracy") == 1  # one process reports
    assert "2 processes of 1 thread each" in " ".join(done.stdout.split())  # the header wraps at 80 columns
    assert checkpoint.load(out / "last.npz").epoch == 1 and (out / "test.json").is_file()


def test_shards_cover_every_row_once():
    for k in (1, 2, 7, 49, 128):
        for world in (1, 2, 3, 8):
            rows = [torch_distributed.Group(r, world, "").shard(k) for r in range(world)]
            assert [i for s in rows for i in range(s.start, s.stop)] == list(range(k))


def test_mistakes_exit_2(tmp_path, capsys):
    code, _, err = run_main(["train", "lenet5", "--nproc", "2", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "add --engine torch" in err
    code, _, err = run_main(["train", "lenet5", "--engine", "torch", "--nproc", "65", "--out", str(tmp_path / "b")],
                            capsys)
    assert code == 2 and "more than the batch of 64 images" in err
    code, _, err = run_main(["train", "lenet5", "--engine", "torch", "--nproc", "0", "--out", str(tmp_path / "c")],
                            capsys)
    assert code == 2 and "--nproc must be a positive number" in err
