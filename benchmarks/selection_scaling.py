"""Time ``selection.select_groups`` against the number of tasks and groups.

Seeded affinity tables (onto-from orientation, maximised, singletons
forbidden): "random" has independent N(0, 1) entries; "planted" has affinity 1
between tasks of the same hidden block (n // 5 blocks, at least 2) and 0
across, plus N(0, 0.3^2) noise. Prints a markdown table: the median time of
``--repeats`` runs for up to 9 tasks, one run above; the gap column is 0 when
the optimum is proven; "best at" is when the returned selection was first found.
Ends with one JSON line of all rows and the load average.

    python benchmarks/selection_scaling.py [--tasks 5 9 20 40 60 100 200] [--groups 2 3 4 5]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selection import select_groups  # noqa: E402


def affinity_table(kind, n, seed):
    """(tasks, matrix) of the given kind, seeded."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        matrix = rng.normal(size=(n, n))
    else:
        labels = np.arange(n) % max(2, n // 5)
        matrix = (labels[:, None] == labels[None, :]) + 0.3 * rng.normal(size=(n, n))
    return [f"task{i}" for i in range(n)], matrix


def timed(table, groups, time_limit):
    """(seconds, Selection, seconds until its score was first reached) of one call."""
    reports = []
    start = time.perf_counter()
    result = select_groups(table, max_groups=groups, time_limit=time_limit, progress=reports.append)
    found = min(r.seconds for r in reports if r.score >= result.score - 1e-12)
    return time.perf_counter() - start, result, found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[5, 9, 20, 40, 60, 100, 200])
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--kinds", nargs="+", default=["random", "planted"])
    parser.add_argument("--repeats", type=int, default=5, help="runs per case up to 9 tasks")
    parser.add_argument("--time-limit", type=float, default=60.0)
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| tasks | groups | table | seconds | best at | score | gap |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    rows = []
    for n in args.tasks:
        for k in args.groups:
            for kind in args.kinds:
                table = affinity_table(kind, n, seed=n)
                runs = [
                    timed(table, k, args.time_limit) for _ in range(args.repeats if n <= 9 else 1)
                ]
                seconds = statistics.median(s for s, _, _ in runs)
                _, result, found = runs[-1]
                rows.append(
                    {
                        "tasks": n,
                        "groups": k,
                        "table": kind,
                        "seconds": round(seconds, 2),
                        "best_at": round(found, 2),
                        "score": result.score,
                        "gap": result.gap,
                    }
                )
                print(
                    f"| {n} | {k} | {kind} | {seconds:.2f} | {found:.2f} | {result.score:.4f} | "
                    f"{result.gap:.3g} |",
                    flush=True,
                )
    print(
        json.dumps(
            {
                "benchmark": "selection_scaling",
                "time_limit": args.time_limit,
                "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
