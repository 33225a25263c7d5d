"""Command line: ``python -m selection groups ...`` and ``... networks ...``.

groups: --scores FILE (JSON: a dict of dicts {t: {u: score onto t from u}},
tag_jax's affinity.json, whose "matrix[source][target]" orientation is
transposed automatically, or the pairs.json of its HOA 'pairs' method, of
which --pairs-key picks the table, default validation_loss), --max-groups K
[K ...], --minimize, --transpose (flip the dict-of-dicts form), --singletons
forbid|diagonal, --time-limit S, --json, --progress (on stderr, a line each
time the best selection or its proven gap improves, and one when the search
stops: useful at many tasks, where the time limit is reached).

networks: --networks FILE.csv (format in ``selection.network_files``), --budget B,
--hoa (apply the higher-order approximation first), --test FILE.csv (report
the selection's total on those values too), --allow-uncovered, --time-limit S,
--json. Without --allow-uncovered every task must be output by a chosen
network: a budget that allows no such selection is an error naming the
smallest one that does. With it, tasks may be left uncovered (each counts
``UNCOVERED_LOSS``, 99, in the total, as in Standley et al.) and the report
lists them.

Time limits count from the start of the command (the Python process, so its
start-up and reading the file count too): groups gives the ks, in turn, an equal
share of what is left of S times the number of ks, at most S each, so the command
takes at most S per k and S times the number of ks in all, plus the time to print
the answer; networks stops its search S seconds after the start.
Both report the best selection found within the time limit and its gap: 0
when proven optimal, otherwise how much the score (groups) or total loss
(networks) could still improve.

A bad file or value prints one line on stderr and exits with status 2, with
nothing on stdout.
"""

import argparse
import json
import os
import sys
import time

from .groups import select_groups
from .network_files import load_networks
from .networks import (
    UNCOVERED_LOSS,
    BudgetTooSmall,
    hoa_approximation,
    rescore,
    select_networks,
    task_order,
)
from .scores import DEFAULT_PAIRS_KEY, PAIRS_KEYS, load_scores

SHORTEST_LIMIT = 0.01  # seconds given to a k whose share of the time is already spent
MAX_START_SECONDS = 60.0  # a process older than this at main() was not just started


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
    groups.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="seconds per value of k (default 60), counted from the command's start: the ks "
        "share this times their number equally, at most this each, so the whole command takes "
        "at most this times the number of ks",
    )
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
    networks.add_argument(
        "--allow-uncovered",
        action="store_true",
        help="accept a selection that leaves tasks uncovered (no chosen network outputs them; "
        f"each counts {UNCOVERED_LOSS:g} in the total) and list them; by default a budget "
        "that cannot cover every task is an error",
    )
    networks.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="seconds (default 60), counted from the command's start",
    )
    networks.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def process_start():
    """``time.monotonic()`` at the start of this process (Linux: its start time in
    /proc/self/stat); elsewhere, now."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # after "pid (command name)"
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # seconds after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    if not 0.0 <= age <= MAX_START_SECONDS:  # clocks that do not compare: count from now
        return time.monotonic()
    return time.monotonic() - age


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


def _run_groups(args, started):
    table = load_scores(args.scores, transpose=args.transpose, pairs_key=args.pairs_key)
    objective = "minimize" if args.minimize else "maximize"
    results, runs = [], len(args.max_groups)
    for done, k in enumerate(args.max_groups):
        selection = select_groups(
            table,
            max_groups=k,
            objective=objective,
            singletons=args.singletons,
            time_limit=_time_limit(args.time_limit, runs - done, runs, started),
            progress=_progress_printer(k) if args.progress else None,
        )
        results.append((k, selection))
    if args.json:
        return json.dumps([{"max_groups": k, **s.to_dict()} for k, s in results], indent=1)
    return "\n".join(_groups_report(k, s) for k, s in results)


def _time_limit(limit, runs_left, runs, started):
    """Seconds for the next of ``runs`` searches of at most ``limit`` seconds each, all due
    ``runs * limit`` seconds after ``started`` (a ``time.monotonic()`` instant), when
    ``runs_left`` of them (this one included) are still to run: an equal share of the time
    left, at most ``limit`` and at least ``SHORTEST_LIMIT``."""
    if not limit > 0:
        raise ValueError(f"time_limit must be positive, got {limit!r}")
    left = started + runs * limit - time.monotonic()
    return max(min(limit, left / runs_left), SHORTEST_LIMIT)


def _what_to_do(error):
    """A BudgetTooSmall's message followed by the options that get past it."""
    partial = (
        "--allow-uncovered to accept a selection that leaves tasks uncovered "
        f"(each counts {UNCOVERED_LOSS:g} in the total)"
    )
    if error.covering_budget is None:
        return f"{error}; pass {partial}"
    return f"{error}; raise --budget to {error.covering_budget:g}, or pass {partial}"


def _run_networks(args, started):
    networks = load_networks(args.networks)
    tasks = task_order(networks)
    candidates = hoa_approximation(networks) if args.hoa else networks
    try:
        chosen = select_networks(
            candidates,
            budget=args.budget,
            tasks=tasks,
            time_limit=_time_limit(args.time_limit, 1, 1, started),
            cover_all=not args.allow_uncovered,
        )
    except BudgetTooSmall as error:
        raise ValueError(_what_to_do(error)) from None
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
    if chosen.uncovered:
        lines.append(
            f"  uncovered: {', '.join(chosen.uncovered)} (no chosen network outputs them; "
            f"each counts {UNCOVERED_LOSS:g} in the total)"
        )
    return "\n".join(lines)


def main(argv=None, started=None):
    """Run the command line; returns the exit status. ``started``: the ``time.monotonic()``
    instant the time limits count from (default: now)."""
    started = time.monotonic() if started is None else started
    args = _parser().parse_args(argv)
    run = _run_groups if args.command == "groups" else _run_networks
    try:
        output = run(args, started)
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        print(f"python -m selection {args.command}: error: {message}", file=sys.stderr)
        return 2
    print(output)
    return 0
