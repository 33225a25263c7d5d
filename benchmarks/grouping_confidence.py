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

Prints, per case, seed and k: the confidence, the verdict, whether the run's grouping is the
one most seeds chose (and that grouping's share of the seeds), the answer the seed-to-seed
studies give (ANSWER) and whether the verdict fits it; the verdict thresholds chosen on the
--choose_seeds (choose_thresholds), and how the verdicts with the thresholds in use
(selection.confidence) fit the answers on the choosing seeds and on the --report_seeds, never
used for choosing; and the resampling's cost next to the training time.
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
# Each case's answer at each k, from the seed-to-seed studies (docs/studies.md): the same
# grouping in every seed ("stable": the verdict should be clear), a grouping that changes
# from seed to seed ("unstable": not clear; synthetic k = 2 merges two of the three planted
# groups, a different two in each seed), or none by construction ("none": no preferred grouping).
ANSWER = {
    ("synthetic", 2): "unstable",
    ("synthetic", 3): "stable",
    ("digits", 2): "unstable",
    ("digits", 3): "unstable",
    ("copies", 2): "none",
    ("copies", 3): "none",
}
VERDICTS_FOR = {
    "stable": ("clear",),
    "unstable": ("uncertain", "no preferred grouping"),
    "none": ("no preferred grouping",),
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
    train_case(workdir(root, case, seed), root, case, seed)


def train_case(folder, root, case, seed, extra=()):
    """Trains one TAG run of `case` (CASES) into `folder` with `python -m tag_jax.main`, its seed
    and the `extra` flags, unless folder holds results.json; the copies' file is made under
    `root` first when needed."""
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
        *extra,
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


def best_split(above, below):
    """The threshold t that puts most of ``above`` at or over t and most of ``below`` under it:
    among the fewest misplaced values, the middle of the widest gap (rounded to 0.05 when that
    misplaces no more)."""
    values = sorted(set(above) | set(below) | {0.0, 1.0})
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:])] or [0.5]

    def misplaced(t):
        return sum(v < t for v in above) + sum(v >= t for v in below)

    def margin(t):
        return min(abs(v - t) for v in values)

    fewest = min(misplaced(t) for t in cuts)
    best = max((t for t in cuts if misplaced(t) == fewest), key=margin)
    rounded = round(best * 20) / 20
    return rounded if misplaced(rounded) == fewest else best


def choose_thresholds(rows):
    """(clear_at, preferred_at) from rows of the choosing seeds: clear_at splits the stable
    rows (clear) from the others; preferred_at splits the synthetic rows (a grouping the data
    prefer, if not always the same one) from the copies (none), and is at most clear_at."""
    answer = {id(r): ANSWER[r["case"], r["k"]] for r in rows}
    clear_at = best_split(
        [r["confidence"] for r in rows if answer[id(r)] == "stable"],
        [r["confidence"] for r in rows if answer[id(r)] != "stable"],
    )
    preferred_at = best_split(
        [r["confidence"] for r in rows if r["case"] == "synthetic"],
        [r["confidence"] for r in rows if answer[id(r)] == "none"],
    )
    return clear_at, min(preferred_at, clear_at)


def print_rows(rows, clear_at, preferred_at):
    print(
        f"{'case':<10} {'seed':>4} {'k':>2} {'conf':>5} {'distinct':>8}  {'verdict':<22} "
        f"{'seeds agree':>11}  answer   verdict fits"
    )
    for r in rows:
        said = confidence.verdict(r["confidence"], clear_at, preferred_at)
        r["verdict"] = said
        print(
            f"{r['case']:<10} {r['seed']:>4} {r['k']:>2} {r['confidence']:>5.2f} "
            f"{r['num_distinct']:>8}  {said:<22} "
            f"{'yes' if r['modal'] else 'no':>4} ({r['modal_share']:.0%})  "
            f"{ANSWER[r['case'], r['k']]:<8} "
            f"{'ok' if said in VERDICTS_FOR[ANSWER[r['case'], r['k']]] else 'MISMATCH'}"
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
        agree = sum(r["verdict"] in VERDICTS_FOR[ANSWER[r["case"], r["k"]]] for r in picked)
        print(f"{part} seeds {chosen}: verdict fits the answer in {agree} of {len(picked)} rows")
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
