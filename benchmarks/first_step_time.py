"""Seconds from launching the quick start to the end of its first training step.

    python benchmarks/first_step_time.py [--python=/path/to/venv/bin/python] [--repeats=3]

Runs the quick start command (configs/synthetic_tag.py) with the given interpreter from the
repository root, in a fresh temporary workdir, with the autotuned settings given explicitly (as
a run whose autotune decisions are cached; nothing is timed), and stops it once the log says the
first step compiled and ran ('Compiled and ran the first ... step'). Prints each run's wall
seconds and the CPU seconds its process used by then (Linux: /proc; less sensitive than the wall
time to other jobs on the machine), and their medians: the cost of starting (imports, data,
compiling the first step), which a heavy import such as TensorFlow adds to.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_STEP = "Compiled and ran the first"
# The quick start's autotune decisions on the development machine, given explicitly.
SETTINGS = ("--config.model.conv=xla_threaded", "--config.affinity.strategy=unrolled")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process `pid` has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_step_seconds(python: str, repo: str) -> tuple:
    """(wall, CPU) seconds until the quick start run by `python` in `repo` logs its first step's
    end."""
    with tempfile.TemporaryDirectory(prefix="first_step_") as workdir:
        command = [
            python,
            "-m",
            "tag_jax.main",
            "--config=configs/synthetic_tag.py",
            f"--workdir={workdir}",
            *SETTINGS,
        ]
        start = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            for line in process.stderr:
                if FIRST_STEP in line:
                    return time.perf_counter() - start, cpu_seconds(process.pid)
            raise RuntimeError(f"{' '.join(command)} ended (status {process.wait()}) before a step")
        finally:
            process.kill()
            process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the environment's interpreter")
    parser.add_argument("--repo", default=REPO, help="the checkout that interpreter runs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = [first_step_seconds(args.python, args.repo) for _ in range(args.repeats)]
    print(
        f"{args.python}: first step after "
        + ", ".join(f"{wall:.1f} s ({cpu:.1f} s CPU)" for wall, cpu in runs)
    )
    wall, cpu = (statistics.median(column) for column in zip(*runs))
    print(f"median {wall:.1f} s, {cpu:.1f} s CPU; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
