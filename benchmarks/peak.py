"""The machine's measured float32 GEMM peak: the yardstick for the GFLOPS that bench.py reports.

Run from the repository root::

    python benchmarks/peak.py            # 4096³ SGEMM, best of 5, on every core and on one
    python benchmarks/peak.py --size 2048

numpy's own BLAS (OpenBLAS in numpy's wheels) multiplies two n×n float32
matrices; GFLOPS = 2·n³ / seconds, the best of the runs. Each thread count runs
in a fresh process, since OpenBLAS reads its thread count when it loads
(``OPENBLAS_NUM_THREADS``). ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE``, which
some machines set for old OpenBLAS builds, can make it pick an older kernel:
``--clean-openblas-env`` unsets them for the measured processes, as bench.py's
flag does. This is a peak for GEMM as the machine's BLAS delivers it, not the
CPU's theoretical FMA peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

_MEASURE = """
import json, sys, time
import numpy as np
n, runs = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
c = np.empty((n, n), dtype=np.float32)
np.matmul(a, b, out=c)
times = []
for _ in range(runs):
    t = time.perf_counter()
    np.matmul(a, b, out=c)
    times.append(time.perf_counter() - t)
print(json.dumps({"gflops": 2 * n ** 3 / min(times) / 1e9}))
"""


def measure(threads: int, size: int, runs: int, clean: bool) -> float:
    """GFLOPS of numpy's SGEMM on ``threads`` threads (a fresh process)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    if clean:
        for name in OVERRIDES:
            env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(size), str(runs)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])["gflops"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clean-openblas-env", action="store_true")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    overridden = {k: os.environ[k] for k in OVERRIDES if k in os.environ}
    print(f"SGEMM {args.size}³, best of {args.runs}; overrides in the environment: {overridden or 'none'}"
          + (" (unset for the measurement)" if args.clean_openblas_env and overridden else ""))
    for threads in sorted({cores, 1}, reverse=True):
        gflops = measure(threads, args.size, args.runs, args.clean_openblas_env)
        print(f"{threads} thread{'s' if threads > 1 else ''}: {gflops:,.0f} GFLOPS")


if __name__ == "__main__":
    main()
