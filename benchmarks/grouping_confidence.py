"""How sure is the grouping? The confidence of TAG runs against seed-to-seed stability.

  python benchmarks/grouping_confidence.py --root runs/grouping_confidence --train

Three cases whose answer is known: `synthetic` (configs/synthetic_tag.py, three planted groups:
the grouping is the same in every seed), `digits` (configs/npz_tag.py on the offline digits,
8x8: the study finds a different grouping in every seed) and `copies` (configs/npz_tag.py on
nine exchangeable copies of one digits task, benchmarks/exchangeable_digits.py: no grouping can
be preferred). Each case is trained once per seed (--train runs the missing ones with
`python -m tag_jax.main`; a finished workdir is reused), then every run's confidence is
recomputed from its affinity_blocks.npz with the current defaults (config.affinity.confidence)
or the --block_length / --num_resamples given.

Prints, per case, seed and k: the confidence, the verdict, and whether the run's grouping is
the one most seeds chose (seed stability); then the verdict thresholds chosen on the
--choose_seeds (clear_at: midway between the highest confidence of an unstable case and the
lowest of the stable one; preferred_at: midway between the copies' highest confidence and the
next confidence above it, never above clear_at) and how the verdicts agree with the expected
answer on the --report_seeds, never used for choosing; and the resampling's cost next to the
training time.
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys

import numpy as np

from selection import confidence
from tag_jax import grouping

CASES = {
    "synthetic": ("configs/synthetic_tag.py", []),
    "digits": ("configs/npz_tag.py", ["--config.dataset.name=digits", "--config.image_size=8"]),
    "copies": ("configs/npz_tag.py", ["--config.dataset.path={copies}"]),
}
# What each case's verdict should be: its grouping is stable across seeds (clear), changes
# from seed to seed (not clear), or cannot be preferred by construction.
EXPECTED = {
    "synthetic": ("clear",),
    "digits": ("uncertain", "no preferred grouping"),
    "copies": ("no preferred grouping",),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/grouping_confidence")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--choose_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--report_seeds", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--train", action="store_true", help="train the runs that are missing")
    parser.add_argument("--num_resamples", type=int, default=None)
    parser.add_argument("--block_length", type=int, default=None)
    parser.add_argument("--json", default="", help="also write the rows to this file")
    return parser.parse_args(argv)


def workdir(root, case, seed):
    return os.path.join(root, case, f"seed{seed}")


def train(root, case, seed):
    """Runs the case for one seed unless its results.json exists."""
    folder = workdir(root, case, seed)
    if os.path.exists(os.path.join(folder, "results.json")):
        return
    copies = os.path.join(root, "exchangeable_digits.npz")
    if case == "copies" and not os.path.exists(copies):
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run(
            [sys.executable, os.path.join(here, "exchangeable_digits.py"), "--out", copies],
            check=True,
        )
    config, overrides = CASES[case]
    command = [
        sys.executable,
        "-m",
        "tag_jax.main",
        f"--config={config}",
        f"--workdir={folder}",
        f"--config.seed={seed}",
        *(o.format(copies=copies) for o in overrides),
    ]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def run_rows(root, case, seed, settings):
    """One row per k of a finished run, its confidence recomputed from affinity_blocks.npz."""
    folder = workdir(root, case, seed)
    with open(os.path.join(folder, "groups.json")) as f:
        groups = json.load(f)
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    blocks = np.load(os.path.join(folder, "affinity_blocks.npz"))
    selections = [
        {key: s[key] for key in ("max_groups", "groups", "score", "gap")}
        for s in groups["selections"]
    ]
    selections, resampling = grouping.resampled_confidence(
        groups["tasks"],
        selections,
        {"sums": blocks["block_sums"], "counts": blocks["block_counts"]},
        settings,
        time_limit=60.0,
    )
    return [
        {
            "case": case,
            "seed": seed,
            "k": s["max_groups"],
            "groups": s["groups"],
            "confidence": s["confidence"],
            "num_distinct": s["num_distinct"],
            "blocks": resampling["blocks"],
            "resampling_seconds": resampling["seconds"],
            "resampling_cpu_seconds": resampling["cpu_seconds"],
            "train_seconds": results["compute"]["train_seconds"],
        }
        for s in selections
    ]


def mark_stability(rows):
    """Adds 'modal': whether a row's grouping is the one chosen in most seeds of its case and k,
    and 'modal_share': the share of seeds choosing that grouping."""
    by_case = collections.defaultdict(list)
    for row in rows:
        by_case[row["case"], row["k"]].append(row)
    for same in by_case.values():
        counts = collections.Counter(confidence.grouping_key(r["groups"]) for r in same)
        modal, n = counts.most_common(1)[0]
        for r in same:
            r["modal"] = confidence.grouping_key(r["groups"]) == modal
            r["modal_share"] = n / len(same)


def midway(low, high):
    """The midpoint of (low, high], rounded to 0.05 inside the interval when possible."""
    middle = (low + high) / 2
    rounded = round(middle * 20) / 20
    return rounded if low < rounded <= high else middle


def choose_thresholds(rows):
    """(clear_at, preferred_at) from rows of the choosing seeds (module docstring)."""
    stable = [r["confidence"] for r in rows if EXPECTED[r["case"]] == ("clear",)]
    unstable = [r["confidence"] for r in rows if "clear" not in EXPECTED[r["case"]]]
    clear_at = midway(max(unstable, default=0.0), min(stable, default=1.0))
    none = max(
        (r["confidence"] for r in rows if EXPECTED[r["case"]] == ("no preferred grouping",)),
        default=0.0,
    )
    above = min([c for c in unstable + stable if c > none] + [clear_at])
    return clear_at, min(midway(none, above), clear_at)


def print_rows(rows, clear_at, preferred_at):
    print(
        f"{'case':<10} {'seed':>4} {'k':>2} {'conf':>5} {'distinct':>8}  {'verdict':<22} "
        f"{'seeds agree':>11}  expected"
    )
    for r in rows:
        said = confidence.verdict(r["confidence"], clear_at, preferred_at)
        r["verdict"] = said
        print(
            f"{r['case']:<10} {r['seed']:>4} {r['k']:>2} {r['confidence']:>5.2f} "
            f"{r['num_distinct']:>8}  {said:<22} "
            f"{'yes' if r['modal'] else 'no':>4} ({r['modal_share']:.0%})  "
            f"{'ok' if said in EXPECTED[r['case']] else 'MISMATCH'}"
        )


def main(argv=None):
    args = parse_args(argv)
    seeds = args.choose_seeds + args.report_seeds
    if args.train:
        for seed in seeds:
            for case in args.cases:
                train(args.root, case, seed)
    settings = grouping.confidence_config()
    if args.num_resamples is not None:
        settings.num_resamples = args.num_resamples
    if args.block_length is not None:
        settings.block_length = args.block_length
    settings.time_budget = 1e9  # every resample solved: the numbers do not depend on the load
    rows = [
        row
        for case in args.cases
        for seed in seeds
        if os.path.exists(os.path.join(workdir(args.root, case, seed), "affinity_blocks.npz"))
        for row in run_rows(args.root, case, seed, settings)
    ]
    mark_stability(rows)
    clear_at, preferred_at = choose_thresholds([r for r in rows if r["seed"] in args.choose_seeds])
    print(
        f"resamples {settings.num_resamples}, block length {settings.block_length}; thresholds "
        f"chosen on seeds {args.choose_seeds}: clear_at {clear_at:.2f}, preferred_at "
        f"{preferred_at:.2f} (in use: {confidence.CLEAR_AT}, {confidence.PREFERRED_AT})"
    )
    print_rows(rows, confidence.CLEAR_AT, confidence.PREFERRED_AT)
    for part, chosen in (("choosing", args.choose_seeds), ("reporting", args.report_seeds)):
        picked = [r for r in rows if r["seed"] in chosen]
        agree = sum(r["verdict"] in EXPECTED[r["case"]] for r in picked)
        print(f"{part} seeds {chosen}: verdict as expected in {agree} of {len(picked)} rows")
    for case in args.cases:
        mine = [r for r in rows if r["case"] == case]
        if mine:
            cpu = statistics.median(r["resampling_cpu_seconds"] for r in mine)
            wall = statistics.median(r["resampling_seconds"] for r in mine)
            trained = statistics.median(r["train_seconds"] for r in mine)
            print(
                f"{case}: resampling (all k) median {cpu:.1f} s CPU, {wall:.1f} s wall; training "
                f"median {trained:.0f} s; blocks {statistics.median(r['blocks'] for r in mine)}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
