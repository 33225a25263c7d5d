"""The study's report: rows over seeds with statistics, and its Markdown.

Reads only the stages' results.json files (and the grouping runs' groups.json, for their
confidence); importable and testable without JAX. `build_report` -> report.json's content, with
the rows whose stages are done (partial until every stage is); `markdown(report)` -> report.md;
`main_table(rows)` -> the table printed at the end of a study.
"""

import json
import math
import os

import numpy as np
import scipy.stats

from tag_jax.study import confidence as single_run
from tag_jax.study.plan import GROUPING_LABELS, Entry, Plan


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def seed_statistics(values) -> dict:
    """mean, std (ddof 1), 95% half-width (Student t, n - 1 degrees of freedom) of per-seed values;
    std and half-width None for one value."""
    values = np.asarray(values, np.float64)
    n = len(values)
    std = float(values.std(ddof=1)) if n > 1 else None
    half = float(scipy.stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else None
    return {"mean": float(values.mean()), "std": std, "ci95": half, "values": values.tolist()}


def compare_to_reference(values, reference) -> dict:
    """values - reference (per-seed Total Errors of a row and of all-in-one MTL): the difference of
    means with its Welch 95% interval, and the verdict 'lower' / 'higher' when the interval
    excludes 0, 'within seed noise' otherwise (None with fewer than 2 seeds on either side)."""
    a, b = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    difference = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"difference": difference, "ci95": None, "verdict": None}
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if var_a + var_b == 0:
        half = 0.0
    else:
        dof = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
        half = float(scipy.stats.t.ppf(0.975, dof) * math.sqrt(var_a + var_b))
    verdict = (
        "lower"
        if difference + half < 0
        else "higher"
        if difference - half > 0
        else "within seed noise"
    )
    return {"difference": difference, "ci95": half, "verdict": verdict}


def grouping_counts(groupings) -> list:
    """How often each grouping occurs: [{'groups', 'seeds'}], most frequent first (groups compared
    as sets of sets; first seen first among equals)."""
    counts = {}
    for groups in groupings:
        key = frozenset(frozenset(g) for g in groups)
        counts.setdefault(key, [groups, 0])[1] += 1
    return [{"groups": g, "seeds": n} for g, n in sorted(counts.values(), key=lambda c: -c[1])]


def seed_run(entry: Entry, results: dict, planted, groups_records: dict) -> dict:
    """One seed's run of a row, from its stages' results.json (its own entry of 'seed_results' in
    a run that trained the seeds side by side) and, for a grouping row, its grouping run's
    confidence at k (groups_records: {stage: groups.json or None})."""

    def of_seed(run):
        return run["seed_results"][entry.seed] if "seed_results" in run else run

    reported = {**results[entry.stages[-1]], **of_seed(results[entry.stages[-1]])}
    groups = reported["groups"]
    return {
        "seed": entry.seed,
        "stages": list(entry.stages),
        "groups": groups,
        "confidence": (
            single_run.run_confidence(groups_records.get(entry.stages[0]), entry.k)
            if entry.label in single_run.SEARCH_LABELS
            else None
        ),
        "recovers_planted": (
            None
            if planted is None or entry.label not in GROUPING_LABELS
            else {frozenset(g) for g in groups} == {frozenset(g) for g in planted}
        ),
        "learned": all(of_seed(results[s]).get("learned", True) for s in entry.stages),
        "test_total_error": reported["test"]["total_error"],
        "validation_total_error": reported["validation"]["total_error"],
        "baseline_test_total_error": reported["majority_baseline"]["test"]["total_error"],
        "test_task_accuracy": dict(zip(reported["tasks"], reported["test"]["task_accuracy"])),
        "seconds": entry.share * sum(results[s]["compute"]["train_seconds"] for s in entry.stages),
        "trunk_passes": round(
            entry.share * sum(results[s]["compute"]["trunk_passes"] for s in entry.stages)
        ),
    }


def summary_row(label: str, k: int, runs: list, mtl_runs) -> dict:
    """A report row over its seeds' runs: means (and statistics) of Total Error and compute, the
    most frequent grouping and how often each was chosen, its runs' confidence and where that
    disagrees with the seeds (tag_jax.study.confidence), the comparison with MTL."""
    test = seed_statistics([r["test_total_error"] for r in runs])
    planted = [r["recovers_planted"] for r in runs]
    groupings = grouping_counts([r["groups"] for r in runs])
    learned = sum(r["learned"] for r in runs)
    comparable = (
        label != "mtl" and mtl_runs and learned == len(runs) and all(r["learned"] for r in mtl_runs)
    )
    tasks = runs[0]["test_task_accuracy"]
    return {
        "label": label,
        "k": k,
        "seeds": len(runs),
        "groups": groupings[0]["groups"],
        "groupings": groupings,
        "confidence": single_run.row_confidence(runs),
        "disagreement": single_run.disagreement(
            single_run.row_confidence(runs), groupings, len(runs)
        ),
        "learned_seeds": learned,
        "recovers_planted": None if planted[0] is None else sum(planted) / len(planted),
        "test_total_error": test["mean"],
        "test_total_error_stats": test,
        "validation_total_error": float(np.mean([r["validation_total_error"] for r in runs])),
        "baseline_test_total_error": float(np.mean([r["baseline_test_total_error"] for r in runs])),
        "vs_mtl": (
            compare_to_reference(test["values"], [r["test_total_error"] for r in mtl_runs])
            if comparable
            else None
        ),
        "test_task_accuracy": {
            t: float(np.mean([r["test_task_accuracy"][t] for r in runs])) for t in tasks
        },
        "seconds": float(np.mean([r["seconds"] for r in runs])),
        "trunk_passes": round(float(np.mean([r["trunk_passes"] for r in runs]))),
        "runs": runs,
    }


def build_report(config, task_names, study_plan: Plan, workdir, planted=None) -> dict:
    """report.json's content: one row per method and k over its seeds, with groups, test metrics
    and compute, all read from the stages' results.json; only the rows whose stages are all done
    ('partial' until every stage of the plan is)."""

    def path(stage, name):
        return os.path.join(workdir, stage, name)

    results = {
        stage: read_json(path(stage, "results.json"))
        for stage in dict.fromkeys(s for e in study_plan.entries for s in e.stages)
        if os.path.exists(path(stage, "results.json"))
    }
    entries = [e for e in study_plan.entries if all(s in results for s in e.stages)]
    searches = {e.stages[0] for e in entries if e.label in single_run.SEARCH_LABELS}
    groups_records = {
        s: read_json(path(s, "groups.json")) if os.path.exists(path(s, "groups.json")) else None
        for s in searches
    }
    runs = {}
    for entry in entries:
        runs.setdefault((entry.label, entry.k), []).append(
            seed_run(entry, results, planted, groups_records)
        )
    mtl_runs = next((r for (label, _), r in runs.items() if label == "mtl"), None)
    rows = [summary_row(label, k, seed_runs, mtl_runs) for (label, k), seed_runs in runs.items()]
    compute = {
        name: {"method": r["method"], "steps": r["steps"], **r["compute"]}
        for name, r in results.items()
    }
    done = sum(os.path.exists(path(s.name, "results.json")) for s in study_plan.stages)
    return {
        "tasks": list(task_names),
        "planted_groups": planted,
        "seeds": config.study.seeds,
        "partial": done < len(study_plan.stages),
        "stages_done": done,
        "stages_total": len(study_plan.stages),
        "rows": rows,
        "notes": study_plan.notes,
        "stages": compute,
    }


def format_groups(groups) -> str:
    return " ".join("{" + ", ".join(g) + "}" for g in groups)


def format_total_error(row) -> str:
    stats = row["test_total_error_stats"]
    if stats["std"] is None:
        return f"{stats['mean']:.2f}"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f} (95% CI ± {stats['ci95']:.2f})"


VERDICTS = {"lower": "lower", "higher": "higher", "within seed noise": "within noise"}


def format_vs_mtl(row) -> str:
    compared = row["vs_mtl"]
    if compared is None:
        return "-"
    if compared["verdict"] is None:
        return f"{compared['difference']:+.2f}"
    return (
        f"{compared['difference']:+.2f} ± {compared['ci95']:.2f}: {VERDICTS[compared['verdict']]}"
    )


def main_table(rows) -> list[str]:
    """The report's main table (markdown lines): a row per method and k, mean ± std over seeds; the
    groups column shows the most frequent grouping and in how many seeds it was chosen, the
    confidence column its grouping runs' own confidence (single_run.format_confidence)."""
    lines = [
        "| method | k | groups (seeds) | single-run confidence | Total Error (test) | vs MTL | "
        "val | planted? | seconds | trunk passes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        seeds = r["seeds"]
        if r["learned_seeds"] < seeds:
            groups = f"did not learn ({seeds - r['learned_seeds']}/{seeds} seeds)"
        else:
            groups = format_groups(r["groups"]) + (
                f" ({r['groupings'][0]['seeds']}/{seeds})" if seeds > 1 else ""
            )
        planted = (
            "-"
            if r["recovers_planted"] is None
            else f"{round(r['recovers_planted'] * seeds)}/{seeds}"
            if seeds > 1
            else ("yes" if r["recovers_planted"] else "no")
        )
        lines.append(
            f"| {r['label']} | {r['k']} | {groups} | {single_run.format_confidence(r)} | "
            f"{format_total_error(r)} | "
            f"{format_vs_mtl(r)} | {r['validation_total_error']:.2f} | {planted} | "
            f"{r['seconds']:.0f} | {r['trunk_passes']:,} |"
        )
    return lines


def confidence_section(rows, seeds: int) -> list[str]:
    """Markdown lines on the grouping rows' single-run confidence next to their seed stability:
    where the two disagree (single_run.disagreement); none without a row with a confidence."""
    rated = [r for r in rows if r["confidence"] is not None]
    if not rated:
        return []
    lines = [
        "",
        "## Single-run confidence and seed stability",
        "",
        "'single-run confidence' is each grouping run's own confidence in its grouping at k "
        "(groups.json: the share of resamples of the run's measurements that choose it, and "
        "its verdict), as one run would report it; 'groups (seeds)' is how many seeds chose "
        "the grouping. A row without a confidence shows "
        f"{single_run.MISSING}.",
        "",
    ]
    if seeds == 1:
        return lines + [
            "One seed: seed stability is not measured; with config.study.seeds of 3 or more "
            "the report compares the two."
        ]
    disagreeing = [r for r in rated if r["disagreement"]]
    if not disagreeing:
        return lines + ["They agree on every grouping row."]
    return (
        lines
        + [
            f"Where they disagree ({len(disagreeing)} of {len(rated)} grouping rows):",
            "",
        ]
        + [f"- {r['label']}, k = {r['k']}: {r['disagreement']}." for r in disagreeing]
    )


def markdown(report: dict) -> str:
    """report.md: the main table, groupings per seed, per-task test accuracy, formulas and notes."""
    tasks, rows, seeds = report["tasks"], report["rows"], report["seeds"]
    lines = ["# Grouping study", ""]
    if report["partial"]:
        lines += [
            f"**Partial report: {report['stages_done']} of {report['stages_total']} stages "
            "done.** Rows appear as their stages finish; this file is rewritten after every "
            "stage.",
            "",
        ]
    lines.append(f"Tasks ({len(tasks)}): {', '.join(tasks)}.")
    if report["planted_groups"] is not None:
        lines.append(f"Planted groups: {format_groups(report['planted_groups'])}.")
    if not rows:
        return "\n".join(lines + ["", "No row has all its stages done yet."]) + "\n"
    baseline = np.mean([r["baseline_test_total_error"] for r in rows])
    lines += [
        "",
        f"Total Error = sum over tasks of test error % (lower is better); always answering "
        f"each task's most frequent training class scores {baseline:.2f}. Compute: training "
        "seconds summed over resumes and the stages a row needs (grouping run + training), "
        "and trunk passes (below)"
        + (
            f", per seed. Every row ran {seeds} seeds: Total Error "
            "is their mean ± standard deviation with a 95% "
            "interval of the mean; 'vs MTL' is the difference "
            "from all-in-one MTL with its Welch 95% interval "
            "('within noise' when it holds 0)."
            if seeds > 1
            else "; one seed: differences are not tested against noise."
        ),
        "A row marked 'did not learn' scored not clearly better on validation than that "
        "baseline in some seed: its groups and numbers are not findings.",
        "",
    ]
    lines += main_table(rows) + confidence_section(rows, seeds)
    if seeds > 1:
        lines += [
            "",
            "## Groupings across seeds",
            "",
            "| method | k | grouping: seeds chosen |",
            "|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['label']} | {r['k']} | "
                + "; ".join(f"{format_groups(g['groups'])}: {g['seeds']}" for g in r["groupings"])
                + " |"
            )
    lines += [
        "",
        "## Test accuracy per task" + (" (mean over seeds)" if seeds > 1 else ""),
        "",
        "| method | k | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for r in rows:
        accuracy = " | ".join(f"{r['test_task_accuracy'][t]:.3f}" for t in tasks)
        lines.append(f"| {r['label']} | {r['k']} | {accuracy} |")
    lines += [
        "",
        "## Trunk passes",
        "",
        "One training step of one trunk (forward + backward) on one batch counts 1; each "
        "lookahead forward or extra per-task backward pull counts 1 more (a forward on part "
        "of the batch, its share); evaluation is not "
        "counted. Each stage's steps as its run counted them:",
        "",
    ]
    for name, stage in report["stages"].items():
        plain, measured = stage["trunk_passes_per_step"]
        lines.append(
            f"- {name} ({stage['method']}): {stage['steps']:,} steps x {plain} passes"
            + (
                f", of which {stage['measured_steps']:,} measured steps x {measured}"
                if stage["measured_steps"]
                else ""
            )
            + f" = {stage['trunk_passes']:,}"
        )
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"
