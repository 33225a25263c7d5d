"""Stop when settled: compute saved by config.affinity.stop_when_stable, and the groupings.

  python benchmarks/stop_when_stable.py --root runs/stop_when_stable

For each case and seed, a TAG run measured to its end (the option off) and runs with
stop_when_stable = N for each --n and config.affinity.stable_check_share for each --shares (a
large share: a confidence at every check once the grouping holds), trained with
`python -m tag_jax.main` (a finished workdir is reused). Prints, per case, N and share: how many
runs stopped before the full run's end, the epochs and trunk passes saved (medians over seeds),
the wall seconds against the full run's (the checks included) and how often the stopped run's
grouping and verdict equal the full run's at each k; then one line per run.
"""

import argparse
import json
import os
import statistics

from grouping_confidence import CASES, train_case  # the same cases, trained the same way

from selection import confidence


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/stop_when_stable")
    parser.add_argument("--cases", nargs="+", default=["synthetic", "digits"], choices=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, nargs="+", default=[2])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 1000.0])
    parser.add_argument("--json", default="", help="also write the rows to this file")
    return parser.parse_args(argv)


def train(root, case, seed, n=0, share=None):
    """(results.json, groups.json) of the run, trained unless its results.json exists."""
    name = "full" if not n else f"stop{n}_share{share:g}"
    folder = os.path.join(root, case, f"seed{seed}", name)
    extra = (
        (f"--config.affinity.stop_when_stable={n}", f"--config.affinity.stable_check_share={share}")
        if n
        else ()
    )
    train_case(folder, root, case, seed, extra)
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(folder, "groups.json")) as f:
        return results, json.load(f)


def answers(groups):
    """{k: (the grouping as a set of sets, its verdict)}."""
    return {
        s["max_groups"]: (confidence.grouping_key(s["groups"]), s["verdict"])
        for s in groups["selections"]
    }


def compare(case, seed, n, share, full, stopped):
    """One row: the stopped run against the full one."""
    (full_results, full_groups), (results, groups) = full, stopped
    ours, theirs = answers(groups), answers(full_groups)
    checks = groups["stability"]["checks"]
    return {
        "case": case,
        "seed": seed,
        "n": n,
        "share": share,
        "epochs": results["epochs"],
        "full_epochs": full_results["epochs"],
        "stopped": "settled" in results["stop_reason"],
        "saved_epochs": 1 - results["epochs"] / full_results["epochs"],
        "saved_passes": 1
        - results["compute"]["trunk_passes"] / full_results["compute"]["trunk_passes"],
        "seconds": results["compute"]["train_seconds"],
        "full_seconds": full_results["compute"]["train_seconds"],
        "check_seconds": sum(c["seconds"] for c in checks),
        "confidence_checks": sum("confidence" in c["selections"][0] for c in checks),
        "same_groups": {k: ours[k][0] == theirs[k][0] for k in ours},
        "same_verdict": {k: ours[k][1] == theirs[k][1] for k in ours},
        "verdicts": {k: ours[k][1] for k in ours},
        "full_verdicts": {k: theirs[k][1] for k in ours},
        "confidence": {s["max_groups"]: s["confidence"] for s in groups["selections"]},
        "full_confidence": {s["max_groups"]: s["confidence"] for s in full_groups["selections"]},
    }


def print_tables(rows):
    print("\nper case, N and share (medians over seeds); same: stopped runs as the full run's")
    print("case       N  share  stopped  epochs saved  passes saved  seconds / full  same groups")
    for key in sorted({(r["case"], r["n"], r["share"]) for r in rows}):
        group = [r for r in rows if (r["case"], r["n"], r["share"]) == key]
        stopped = [r for r in group if r["stopped"]]
        ks = sorted(group[0]["same_groups"])
        same = ", ".join(
            f"k={k} {sum(r['same_groups'][k] for r in stopped)}/{len(stopped)}" for k in ks
        )
        ratio = statistics.median(r["seconds"] / r["full_seconds"] for r in group)
        print(
            f"{key[0]:10s} {key[1]:1d} {key[2]:6g}  {len(stopped)}/{len(group)}"
            f"      {statistics.median(r['saved_epochs'] for r in group):5.0%}"
            f"        {statistics.median(r['saved_passes'] for r in group):5.0%}"
            f"         {ratio:5.2f}       {same}"
        )
    print("\nevery run: epochs (full), seconds (full), checks' seconds, verdicts (full's)")
    for r in rows:
        verdicts = "; ".join(
            f"k={k} {r['verdicts'][k]} {r['confidence'][k]:.2f}"
            f" ({r['full_verdicts'][k]} {r['full_confidence'][k]:.2f})"
            + ("" if r["same_groups"][k] else " OTHER GROUPS")
            for k in sorted(r["verdicts"])
        )
        print(
            f"{r['case']:10s} seed {r['seed']} N={r['n']} share={r['share']:g}: "
            f"{r['epochs']} ({r['full_epochs']}) epochs, {r['seconds']:.0f} "
            f"({r['full_seconds']:.0f}) s, checks {r['check_seconds']:.1f} s "
            f"({r['confidence_checks']} with confidence); {verdicts}"
        )


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for case in args.cases:
        for seed in args.seeds:
            full = train(args.root, case, seed)
            for n in args.n:
                for share in args.shares:
                    stopped = train(args.root, case, seed, n, share)
                    rows.append(compare(case, seed, n, share, full, stopped))
    print_tables(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
