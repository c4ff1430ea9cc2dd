"""Sandbox throughput and latency: executions per second and latency percentiles, sequential and in parallel.

    python benchmarks/sandbox.py                  # 100 executions per row
    python benchmarks/sandbox.py --n 40 --parallel 8

Prints a markdown table (docs/benchmarks.md, "Sandbox", holds the figures measured on the reference machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from turnrl.sandbox import Sandbox, SandboxConfig

SNIPPETS = {
    "trivial": ["print(1 + 1)"],
    "typical": ["from sympy import symbols, solve, Rational\n"
                "x = symbols('x')\n"
                "roots = solve(x**2 - 5*x + 6, x)\n"
                "total = sum(Rational(1, k) for k in range(1, 200))\n"
                "print(roots, float(total))"],
    "3rd call (replays 2 cells)": [
        "from sympy import symbols, solve\nx = symbols('x')\nroots = solve(x**2 - 5*x + 6, x)\nprint(roots)",
        "import numpy as np\nm = np.arange(1, 101).reshape(10, 10)\nprint(m.sum())",
        "print(sum(r**2 for r in roots) + int(m.trace()))"],
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(box: Sandbox, program: list[str], n: int, parallel: int) -> dict[str, float]:
    latencies: list[float] = []

    def one(_: int) -> None:
        start = time.perf_counter()
        result = box.run(program)
        latencies.append(time.perf_counter() - start)
        if result.status != "ok":
            raise RuntimeError(f"benchmark snippet failed: {result.error}")

    start = time.perf_counter()
    if parallel == 1:
        for i in range(n):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    return {"per_second": n / wall, "p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99), "mean": statistics.fmean(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="executions per row")
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    with Sandbox(SandboxConfig(timeout=30, workers=args.parallel)) as box:
        warm = box.run("print('warm')")  # starts the launcher (imports numpy and sympy once)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
              f"isolation: {', '.join(warm.isolation)}")
        print()
        print("| snippet | mode | executions/s | p50 ms | p90 ms | p99 ms |")
        print("|---|---|---|---|---|---|")
        for name, program in SNIPPETS.items():
            for parallel in (1, args.parallel):
                row = measure(box, program, args.n, parallel)
                mode = "sequential" if parallel == 1 else f"{parallel} in parallel"
                print(f"| {name} | {mode} | {row['per_second']:.1f} | {row['p50'] * 1000:.0f} | "
                      f"{row['p90'] * 1000:.0f} | {row['p99'] * 1000:.0f} |", flush=True)


if __name__ == "__main__":
    main()
