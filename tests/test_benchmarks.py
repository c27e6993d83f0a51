"""The benchmark harness still runs against today's engine: each cnncli workload once, no timing asserted.

benchmarks/bench.py is not run by CI (its numbers depend on the machine), so a
renamed or moved engine function would break it silently; these tests run its
cnncli workers as the harness does (a fresh process each, the repository first
on the path) and check that they report a result. They need the MNIST files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _mnist_dir() -> Path | None:
    for c in (os.environ.get("CNNCLI_DATA"), str(REPO.parent / "shared" / "datasets")):
        if c and (Path(c) / "mnist").is_dir():
            return Path(c)
    return None


@pytest.mark.skipif(_mnist_dir() is None, reason="the MNIST files are not beside the repository")
@pytest.mark.parametrize("workload,field", [("train64", "images_per_s"), ("infer", "images_per_s"),
                                            ("vgg", "seconds")])
def test_cnncli_workers_of_the_benchmark_run(workload, field):
    env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_DATA_DIR=str(_mnist_dir()))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--worker", "cnncli", workload],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result[field] > 0
