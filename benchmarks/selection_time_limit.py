"""Wall time of ``python -m selection groups`` against its ``--time-limit``.

Writes a seeded affinity.json with independent N(0, 1) entries (``--tasks`` tasks) to a
temporary folder and runs the command as a separate process ``--repeats`` times for the ks
given. Prints, as medians over the repeats, each k's seconds until its search stopped (its
``--progress`` "stopped" line, counted from the start of that k) and the process's wall time
(start-up, reading the file and printing the answer included), each against the promised bound:
1.1 * limit + 1 s per k and 1.1 * limit * (number of ks) + 1 s in all. Ends with one JSON line
of all runs and the load average.

    python benchmarks/selection_time_limit.py [--tasks 500] [--groups 2 3] [--time-limit 10]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_affinity(path, n, seed):
    """An affinity.json of n tasks, rows as sources, entries N(0, 1)."""
    matrix = np.random.default_rng(seed).normal(size=(n, n)).round(6)
    document = {
        "tasks": [f"task{i}" for i in range(n)],
        "orientation": "matrix[source][target]",
        "matrix": matrix.tolist(),
    }
    path.write_text(json.dumps(document))


def timed_run(path, groups, time_limit):
    """(wall seconds of the process, {k: seconds until its search stopped})."""
    command = [sys.executable, "-m", "selection", "groups", "--scores", str(path)]
    command += ["--max-groups", *map(str, groups), "--time-limit", str(time_limit), "--progress"]
    start = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
    wall = time.monotonic() - start
    stopped = [line.split() for line in completed.stderr.splitlines() if "(stopped)" in line]
    return wall, {int(words[2].rstrip(":")): float(words[3]) for words in stopped}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    limit, groups = args.time_limit, args.groups
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "affinity.json"
        write_affinity(path, args.tasks, seed=args.tasks)
        runs = [timed_run(path, groups, limit) for _ in range(args.repeats)]
    print(f"{args.tasks} tasks, --time-limit {limit:g}, ks {groups}, {args.repeats} runs (median)")
    print("| what | seconds | bound | max of runs |")
    print("|---|---:|---:|---:|")
    for k in groups:
        seconds = [stopped[k] for _, stopped in runs]
        bound = 1.1 * limit + 1.0
        print(f"| k = {k} | {statistics.median(seconds):.2f} | {bound:.2f} | {max(seconds):.2f} |")
    walls = [wall for wall, _ in runs]
    bound = 1.1 * limit * len(groups) + 1.0
    print(f"| process | {statistics.median(walls):.2f} | {bound:.2f} | {max(walls):.2f} |")
    print(
        json.dumps(
            {
                "benchmark": "selection_time_limit",
                "tasks": args.tasks,
                "groups": groups,
                "time_limit": limit,
                "runs": [{"wall": round(w, 2), "per_k": s} for w, s in runs],
                "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
