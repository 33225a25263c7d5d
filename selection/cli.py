"""Command line: ``python -m selection groups ...`` and ``... networks ...``.

groups: --scores FILE (JSON: a dict of dicts {t: {u: score onto t from u}},
tag_jax's affinity.json, whose "matrix[source][target]" orientation is
transposed automatically, or the pairs.json of its HOA 'pairs' method, of
which --pairs-key picks the table, default validation_loss), --max-groups K
[K ...], --minimize, --transpose (flip the dict-of-dicts form), --singletons
forbid|diagonal, --time-limit S, --json, --progress (on stderr, a line each
time the best selection or its proven gap improves, and one when the search
stops: useful at many tasks, where the time limit is reached).

networks: --networks FILE.csv (format in ``selection.networks``), --budget B,
--hoa (apply the higher-order approximation first), --test FILE.csv (report
the selection's total on those values too), --time-limit S, --json.

Both report the best selection found within the time limit and its gap: 0
when proven optimal, otherwise how much the score (groups) or total loss
(networks) could still improve.

A bad file or value prints one line on stderr and exits with status 2.
"""

import argparse
import json
import sys

from .groups import select_groups
from .networks import hoa_approximation, load_networks, rescore, select_networks, task_order
from .scores import DEFAULT_PAIRS_KEY, PAIRS_KEYS, load_scores


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m selection", description="Choose which tasks to train together."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    groups = commands.add_parser("groups", help="groups from a pairwise score table")
    groups.add_argument(
        "--scores", required=True, help="JSON score table, affinity.json or pairs.json"
    )
    groups.add_argument(
        "--max-groups", required=True, type=int, nargs="+", help="one or more values of k"
    )
    groups.add_argument("--minimize", action="store_true", help="scores are errors or losses")
    groups.add_argument(
        "--transpose", action="store_true", help="the dict of dicts is {source: {target: score}}"
    )
    groups.add_argument("--singletons", choices=("forbid", "diagonal"), default="forbid")
    groups.add_argument(
        "--pairs-key",
        choices=PAIRS_KEYS,
        help=f"table of a pairs.json (default {DEFAULT_PAIRS_KEY})",
    )
    groups.add_argument("--time-limit", type=float, default=60.0, help="seconds per value of k")
    groups.add_argument("--json", action="store_true", help="machine-readable output")
    groups.add_argument(
        "--progress",
        action="store_true",
        help="print the best score and proven gap on stderr as they improve",
    )
    networks = commands.add_parser("networks", help="budgeted choice among trained networks")
    networks.add_argument("--networks", required=True, help="CSV of networks (selection values)")
    networks.add_argument("--budget", required=True, type=float)
    networks.add_argument(
        "--hoa", action="store_true", help="apply the higher-order approximation first"
    )
    networks.add_argument("--test", help="CSV of the same networks with test values")
    networks.add_argument("--time-limit", type=float, default=60.0, help="seconds")
    networks.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _status(gap):
    if gap == float("inf"):
        return "no bound yet"
    return "proven optimal" if gap == 0 else f"gap {gap:.6g}: not proven optimal"


def _groups_report(k, selection):
    lines = [f"max groups {k}: score {selection.score:.6g} ({_status(selection.gap)})"]
    lines += [f"  group {i + 1}: {', '.join(g)}" for i, g in enumerate(selection.groups)]
    lines += [
        f"  {t} -> group {selection.groups.index(g) + 1}" for t, g in selection.assignment.items()
    ]
    return "\n".join(lines)


def _progress_printer(k):
    """A select_groups progress callback printing one line per report on stderr."""

    def report(progress):
        sizes = "+".join(str(len(g)) for g in progress.groups)
        print(
            f"max groups {k}: {progress.seconds:7.1f} s  score {progress.score:.6g}  "
            f"{_status(progress.gap)}  group sizes {sizes}"
            + ("  (stopped)" if progress.final else ""),
            file=sys.stderr,
            flush=True,
        )

    return report


def _run_groups(args):
    table = load_scores(args.scores, transpose=args.transpose, pairs_key=args.pairs_key)
    objective = "minimize" if args.minimize else "maximize"
    results = [
        (
            k,
            select_groups(
                table,
                max_groups=k,
                objective=objective,
                singletons=args.singletons,
                time_limit=args.time_limit,
                progress=_progress_printer(k) if args.progress else None,
            ),
        )
        for k in args.max_groups
    ]
    if args.json:
        return json.dumps([{"max_groups": k, **s.to_dict()} for k, s in results], indent=1)
    return "\n".join(_groups_report(k, s) for k, s in results)


def _run_networks(args):
    networks = load_networks(args.networks)
    tasks = task_order(networks)
    candidates = hoa_approximation(networks) if args.hoa else networks
    chosen = select_networks(
        candidates, budget=args.budget, tasks=tasks, time_limit=args.time_limit
    )
    result = {"budget": args.budget, **chosen.to_dict()}
    if args.test:
        result["test_total"] = rescore(chosen, load_networks(args.test), tasks)
    if args.json:
        return json.dumps(result, indent=1)
    lines = [
        f"budget {args.budget:g}: total {result['total']:.6g} ({_status(chosen.gap)})"
        + (f", test total {result['test_total']:.6g}" if args.test else "")
    ]
    lines += [f"  {'+'.join(n.tasks)} (cost {n.cost:g})" for n in chosen]
    return "\n".join(lines)


def main(argv=None):
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        output = _run_groups(args) if args.command == "groups" else _run_networks(args)
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        print(f"python -m selection {args.command}: error: {message}", file=sys.stderr)
        return 2
    print(output)
    return 0
