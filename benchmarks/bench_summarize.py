"""How long ``cnncli summarize`` takes: ``cnncli summarize vgg16`` should take well under a second.

Run from the repository root::

    python benchmarks/bench_summarize.py              # vgg16, resnet50, googlenet
    python benchmarks/bench_summarize.py vgg16 -n 10 --max-seconds 1

It times the whole command in a fresh interpreter (start-up, imports, YAML,
shape inference, rendering — what a user waits for), then the in-process
parts separately, and checks that no engine module (Numba, layers, kernels)
was imported. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time

ENGINE = ("numba", "cnncli.engine.layers", "cnncli.engine.conv", "cnncli.engine.network")


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return times


def in_process(model: str, runs: int) -> dict[str, list[float]]:
    from rich.console import Console

    from cnncli.commands.summary import summarize
    from cnncli.render import summary as render

    out: dict[str, list[float]] = {"summarize()": [], "render table": []}
    for _ in range(runs):
        t = time.perf_counter()
        s = summarize(model)
        t1 = time.perf_counter()
        render.show_summary(s, "table", None, Console(file=io.StringIO(), width=120))
        t2 = time.perf_counter()
        out["summarize()"].append(t1 - t)
        out["render table"].append(t2 - t1)
    return out


def fmt(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1000:7.1f} ms   min {min(times) * 1000:7.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["vgg16", "resnet50", "googlenet"])
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="exit 1 if the median command time of any model exceeds this")
    args = ap.parse_args()

    baseline = wall([sys.executable, "-c", "pass"], args.runs)
    imports = wall([sys.executable, "-c", "import cnncli.cli"], args.runs)
    print(f"{'python -c pass':32} {fmt(baseline)}")
    print(f"{'import cnncli.cli (typer)':32} {fmt(imports)}")
    worst = 0.0
    for model in args.models:
        times = wall([sys.executable, "-m", "cnncli", "summarize", model], args.runs)
        worst = max(worst, statistics.median(times))
        print(f"{'cnncli summarize ' + model:32} {fmt(times)}")
        for part, t in in_process(model, args.runs).items():
            print(f"{'  ' + part:32} {fmt(t)}")

    probe = ("import sys\nfrom cnncli.cli import main\n"
             f"try:\n    main(['summarize', {args.models[0]!r}])\nexcept SystemExit:\n    pass\n"
             f"print([m for m in {ENGINE!r} if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()[-1]
    print(f"engine modules imported by summarize: {loaded}")
    if loaded != "[]":
        return 1
    if args.max_seconds is not None and worst > args.max_seconds:
        print(f"slowest median {worst:.3f} s exceeds {args.max_seconds} s")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
