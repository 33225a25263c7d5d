"""The grouping study: python -m tag_jax.study --config=configs/synthetic_study.py --workdir=runs/s.

Runs every method of `config.study.methods` as stages, each one
`train.train_and_evaluate(stage_config, workdir/<stage>)` of the config with a
few keys changed (`plan`), then writes `report.md`, `report.json` and
`total_error_vs_compute.png`:
- 'mtl': all tasks in one network ('mtl'); 'single': every task alone ('groups').
  With 'hoa' in the study (equal search and training epochs, no overrides
  for either) 'single' is read from the HOA run instead: its single-task
  networks ARE these networks
  (same initialisation, data order and per-network early stopping; the HOA run
  serves every task from them), and the row gets their share 2 / (T + 1) of
  that run's compute.
- 'tag', 'cs', 'hoa': one grouping run ('tag', 'cs', 'pairs'; its groups.json
  has a selection for each k of config.study.max_groups), then for each k the
  chosen groups trained ('groups' on that groups.json) in `<method>_k<k>`.
- 'random': for each k, a random split into k groups ('random', seed
  config.groups.random_seed).
- 'uw', 'gradnorm', 'pcgrad': one run each; 'dmtg' for each k: a search with
  dmtg.num_groups = k (reported as 'dmtg one-shot') and its groups retrained.
`PLANNERS` maps each study method to the function that adds its stages and rows.
Grouping runs take config.study.epochs_search epochs, the others
config.study.epochs_train (0 = config.num_epochs). config.study.overrides.<method>
changes the config of that method's own runs (not of the groups it selected).

Seeds: with config.study.seeds = S > 1 every stage runs for each seed
(config.seed + i, in workdir/seed_<i>/<stage>: initialisation, data order and
the methods' own randomness differ). Each row then gives the mean, standard
deviation and 95% interval of its test Total Error over seeds, whether it
differs from all-in-one MTL by more than the seed noise (Welch's interval of
the difference), and how often each grouping was chosen. A row one of whose
runs did not learn (validation Total Error not clearly below the majority
baseline, results.json 'learned') is marked and not compared.

Resumable: a stage whose results.json exists is skipped; an interrupted one
resumes from its checkpoints. A stage's own results.json (written atomically,
last) is the only record that it is done, so a kill at any instant leaves a
study that the same command continues. The study folder is locked while the
study runs (tag_jax.workdir); --restart deletes the report and every stage's
checkpoints and outputs first. The report reads each stage's results.json only:
its test metrics, the groups that served the tasks, and its compute (trunk
passes counted by the loop, training seconds summed over resumes).
"""

import dataclasses
import json
import math
import os

import jax
import numpy as np
import scipy.stats
from absl import logging

from tag_jax import cli, config_checks, data, plots, reporting
from tag_jax import workdir as workdirs
from tag_jax.data import synthetic
from tag_jax.errors import UserError

GROUPING_LABELS = (
    "tag",
    "cs",
    "hoa",
    "random",
    "dmtg",
    "dmtg one-shot",
)  # rows with a planted check


@dataclasses.dataclass(frozen=True)
class Stage:
    """One run: its folder name, config changes (flattened keys), whether it is a grouping run, the
    study method whose config.study.overrides apply ('' = none), and whether its seeds can train
    side by side in one run (a 'groups'/'random' run whose networks no seed changes)."""

    name: str
    settings: dict
    search: bool = False
    method: str = ""
    stackable: bool = False


@dataclasses.dataclass(frozen=True)
class Entry:
    """One seed's run of a report row: `share` of the compute of `stages` spent on it, the last
    one's results reported; the rows of config.study.seeds seeds share label and k."""

    label: str
    k: int
    stages: tuple
    share: float = 1.0
    seed: int = 0


@dataclasses.dataclass
class Plan:
    """Stages in run order, report entries, notes on reused runs."""

    stages: list = dataclasses.field(default_factory=list)
    entries: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    def train_groups(self, name: str, search: str, k: int, label: str, max_groups: int, workdir):
        """A stage training the groups.json selection `max_groups` of stage `search`; its row."""
        self.stages.append(
            Stage(
                name,
                {
                    "method": "groups",
                    "groups.max_groups": max_groups,
                    "groups.groups_file": os.path.join(workdir, search, "groups.json"),
                },
            )
        )
        self.entries.append(Entry(label, k, (search, name)))


def one_run(method: str):
    """Planner of a study method that is one run of the training method of the same name."""

    def add(plan: Plan, config, task_names, workdir):
        del config, task_names, workdir
        plan.stages.append(Stage(method, {"method": method}, method=method))
        plan.entries.append(Entry(method, 1, (method,)))

    return add


def search_then_train(study_method: str, method: str):
    """Planner: one grouping run (its groups.json has a selection for each k), then each k trained."""

    def add(plan: Plan, config, task_names, workdir):
        del task_names
        ks = tuple(config.study.max_groups)
        plan.stages.append(
            Stage(
                study_method,
                {"method": method, "selection.max_groups": ks},
                search=True,
                method=study_method,
            )
        )
        for k in ks:
            plan.train_groups(f"{study_method}_k{k}", study_method, k, study_method, k, workdir)

    return add


def add_single(plan: Plan, config, task_names, workdir):
    """Every task alone; read from the HOA run when its single-task networks are these networks."""
    del workdir
    if (
        "hoa" in config.study.methods
        and (config.study.epochs_search == config.study.epochs_train)
        and not ({"single", "hoa"} & set(config.study.overrides.keys()))
    ):
        plan.entries.append(
            Entry("single", len(task_names), ("hoa",), share=2 / (len(task_names) + 1))
        )
        plan.notes.append(
            "single: read from the 'hoa' run, whose single-task networks are these "
            "networks (same initialisation, data order and per-network early stopping);"
            " compute: their share 2 / (T + 1) of that run"
        )
        return
    plan.stages.append(
        Stage(
            "single",
            {"method": "groups", "groups.groups": tuple((t,) for t in task_names)},
            method="single",
            stackable=True,
        )
    )
    plan.entries.append(Entry("single", len(task_names), ("single",)))


def add_random(plan: Plan, config, task_names, workdir):
    del task_names, workdir
    for k in config.study.max_groups:
        plan.stages.append(
            Stage(
                f"random_k{k}",
                {"method": "random", "groups.num_random_groups": k},
                method="random",
                stackable=True,
            )
        )
        plan.entries.append(Entry("random", k, (f"random_k{k}",)))


def add_dmtg(plan: Plan, config, task_names, workdir):
    """For each k: a search with dmtg.num_groups = k ('dmtg one-shot'), then its groups retrained."""
    del task_names
    for k in config.study.max_groups:
        plan.stages.append(
            Stage(
                f"dmtg_k{k}", {"method": "dmtg", "dmtg.num_groups": k}, search=True, method="dmtg"
            )
        )
        plan.entries.append(Entry("dmtg one-shot", k, (f"dmtg_k{k}",)))
        plan.train_groups(f"dmtg_k{k}_groups", f"dmtg_k{k}", k, "dmtg", 0, workdir)


# Study method -> planner(plan, config, task_names, workdir) adding its stages and rows.
PLANNERS = {
    "mtl": one_run("mtl"),
    "single": add_single,
    "tag": search_then_train("tag", "tag"),
    "cs": search_then_train("cs", "cs"),
    "hoa": search_then_train("hoa", "pairs"),
    "random": add_random,
    "uw": one_run("uw"),
    "gradnorm": one_run("gradnorm"),
    "pcgrad": one_run("pcgrad"),
    "dmtg": add_dmtg,
}
STUDY_METHODS = tuple(PLANNERS)


def plan_one_seed(config, task_names, workdir) -> Plan:
    """The stages and report rows of config.study.methods, in that order, for config.seed."""
    result = Plan()
    for method in config.study.methods:
        PLANNERS[method](result, config, task_names, workdir)
        if method in config.study.overrides:
            result.notes.append(
                f"{method}: its own runs trained with config.study.overrides.{method} "
                f"= {config.study.overrides[method].to_dict()}"
            )
    return result


def plan(config, task_names, workdir) -> Plan:
    """The stages and report rows of every seed: with config.study.seeds = 1 the stages of
    `plan_one_seed` in workdir/<stage>; with S > 1 seed i's stages in workdir/seed_<i>/<stage>,
    run with config.seed + i (initialisation, data order and the methods' own randomness), except
    stackable stages: one run in workdir/<stage> trains all S seeds side by side
    (config.groups.seeds = S, the same numbers as S runs), each seed's row taking its share 1 / S."""
    seeds = config.study.seeds
    if seeds == 1:
        return plan_one_seed(config, task_names, workdir)
    result = Plan()
    for i in range(seeds):
        prefix = f"seed_{i}/"
        one = plan_one_seed(config, task_names, os.path.join(workdir, prefix))
        stacked = {s.name for s in one.stages if s.stackable}
        for stage in one.stages:
            if stage.name not in stacked:
                result.stages.append(
                    dataclasses.replace(
                        stage,
                        name=prefix + stage.name,
                        settings={**stage.settings, "seed": config.seed + i},
                    )
                )
            elif not i:
                result.stages.append(
                    dataclasses.replace(stage, settings={**stage.settings, "groups.seeds": seeds})
                )
        for entry in one.entries:
            names = tuple(n if n in stacked else prefix + n for n in entry.stages)
            share = entry.share / seeds if set(entry.stages) <= stacked else entry.share
            result.entries.append(dataclasses.replace(entry, stages=names, seed=i, share=share))
        if not i:
            result.notes = one.notes + [
                f"every row: {seeds} seeds (config.seed + 0..{seeds - 1}: "
                "initialisation, data order and the methods' randomness), "
                "each seed's stages in seed_<i>/"
                + (
                    f"; {', '.join(sorted(stacked))}: the seeds trained side by "
                    "side in one run (config.groups.seeds), each seed's row "
                    "with its share of it"
                    if stacked
                    else ""
                )
            ]
    return result


def validate(config) -> None:
    unknown = [m for m in config.study.methods if m not in STUDY_METHODS]
    if unknown or not config.study.methods:
        raise UserError(
            f"config.study.methods {tuple(config.study.methods)} must be a non-empty "
            f"subset of {STUDY_METHODS}"
        )
    unknown = [m for m in config.study.overrides if m not in STUDY_METHODS]
    if unknown:
        raise UserError(
            f"config.study.overrides has {unknown}; its keys must be study methods {STUDY_METHODS}"
        )
    if not (isinstance(config.study.seeds, int) and config.study.seeds >= 1):
        raise UserError(
            f"config.study.seeds must be an integer >= 1 (runs per stage), got "
            f"{config.study.seeds!r}"
        )
    if not config.study.max_groups or min(config.study.max_groups) < 1:
        raise UserError(
            f"config.study.max_groups must be k values >= 1, got {tuple(config.study.max_groups)}"
        )


def stage_config(config, stage: Stage):
    """The config with the stage's settings, epochs and (last) its method's overrides."""
    result = config.copy_and_resolve_references()
    result.update_from_flattened_dict(stage.settings)
    epochs = config.study.epochs_search if stage.search else config.study.epochs_train
    if epochs:
        result.num_epochs = epochs
    if stage.method in config.study.overrides:
        was_locked = result.is_locked
        result.lock()  # an override may change keys, not add them
        try:
            result.update(config.study.overrides[stage.method].to_dict())
        except (KeyError, TypeError) as e:
            reason = str(e).strip("'\"").splitlines()[0].split(". Other fields")[0]
            raise UserError(
                f"config.study.overrides.{stage.method} does not fit the config: {reason}; "
                "use existing keys with values of their type"
            ) from e
        if not was_locked:
            result.unlock()
    return result


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def run_stage(config, stage: Stage, workdir: str):
    """The stage's results (read back if it already finished), or None if it stopped at max_steps."""
    path = os.path.join(workdir, stage.name, "results.json")
    if os.path.exists(path):
        logging.info("Stage %s: done before, skipped.", stage.name)
        return read_json(path)
    logging.info("Stage %s: %s", stage.name, stage.settings)
    from tag_jax import train  # pylint: disable=g-import-not-at-top (TensorFlow, behind clu: slow)

    results = train.train_and_evaluate(
        stage_config(config, stage), os.path.join(workdir, stage.name)
    )
    return results if "test" in results else None


REPORT_FILES = ("report.json", "report.md", "total_error_vs_compute.png")


def run_study(config, workdir: str, restart: bool = False):
    """Runs (or resumes) every stage, then writes the report; returns it (None if paused).
    restart=True deletes the report and the stages' checkpoints and outputs after the checks."""
    validate(config)
    config_checks.check_values(config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} is a file; pick a folder")
    config_checks.check_workdir_path(os.path.join(workdir, "a_stage_name"))
    task_names = data.load_dataset(config).task_names
    study_plan = plan(config, task_names, workdir)
    from tag_jax import train  # pylint: disable=g-import-not-at-top (TensorFlow, behind clu: slow)

    for stage in study_plan.stages:
        if "groups.groups_file" not in stage.settings:  # the others' groups.json is written later
            train.validate_config(stage_config(config, stage))
    lock = workdirs.acquire(workdir) if jax.process_index() == 0 else None
    try:
        if restart and lock:
            start_over(workdir, study_plan)
        return run_stages(config, task_names, study_plan, workdir)
    finally:
        if lock:
            lock.release()


def start_over(workdir: str, study_plan: Plan) -> None:
    """--restart: deletes the report and each stage's checkpoints and outputs."""
    for name in REPORT_FILES:
        if os.path.exists(os.path.join(workdir, name)):
            os.remove(os.path.join(workdir, name))
    for stage in study_plan.stages:
        deleted = workdirs.clear_outputs(os.path.join(workdir, stage.name))
        if deleted:
            logging.info("--restart: deleted %s in %s.", ", ".join(deleted), stage.name)


def run_stages(config, task_names, study_plan: Plan, workdir: str):
    """Runs the stages not done yet, then writes the report; returns it (None if paused)."""
    for stage in study_plan.stages:
        if run_stage(config, stage, workdir) is None:
            logging.info("Stage %s stopped at config.max_steps; re-run to continue.", stage.name)
            return None
    report = build_report(config, task_names, study_plan, workdir)
    if jax.process_index() == 0:
        write_report(report, workdir)
        print(
            "\n".join(
                ["", f"Grouping study in {workdir}:"]
                + main_table(report["rows"])
                + [f"report.md, report.json and total_error_vs_compute.png in {workdir}"]
            )
        )
    return report


# --- the report ---


def planted_groups(config, task_names):
    """The synthetic dataset's planted groups restricted to the tasks, or None for other datasets."""
    if config.dataset.name != "synthetic":
        return None
    planted = [
        [t for t in g if t in task_names]
        for g in synthetic.planted_groups(tuple(config.dataset.group_sizes))
    ]
    return [g for g in planted if g]


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


def seed_run(entry: Entry, results: dict, planted) -> dict:
    """One seed's run of a row, from its stages' results.json (its own entry of 'seed_results' in
    a run that trained the seeds side by side)."""

    def of_seed(run):
        return run["seed_results"][entry.seed] if "seed_results" in run else run

    reported = {**results[entry.stages[-1]], **of_seed(results[entry.stages[-1]])}
    groups = reported["groups"]
    return {
        "seed": entry.seed,
        "stages": list(entry.stages),
        "groups": groups,
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
    most frequent grouping and how often each was chosen, the comparison with MTL."""
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


def build_report(config, task_names, study_plan: Plan, workdir) -> dict:
    """report.json's content: one row per method and k over its seeds, with groups, test metrics
    and compute, all read from the stages' results.json."""
    results = {
        stage: read_json(os.path.join(workdir, stage, "results.json"))
        for stage in dict.fromkeys(s for e in study_plan.entries for s in e.stages)
    }
    planted = planted_groups(config, task_names)
    runs = {}
    for entry in study_plan.entries:
        runs.setdefault((entry.label, entry.k), []).append(seed_run(entry, results, planted))
    mtl_runs = next((r for (label, _), r in runs.items() if label == "mtl"), None)
    rows = [summary_row(label, k, seed_runs, mtl_runs) for (label, k), seed_runs in runs.items()]
    compute = {
        name: {"method": r["method"], "steps": r["steps"], **r["compute"]}
        for name, r in results.items()
    }
    return {
        "tasks": list(task_names),
        "planted_groups": planted,
        "seeds": config.study.seeds,
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
    groups column shows the most frequent grouping and in how many seeds it was chosen."""
    lines = [
        "| method | k | groups (seeds) | Total Error (test) | vs MTL | val | planted? | "
        "seconds | trunk passes |",
        "|---|---|---|---|---|---|---|---|---|",
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
            f"| {r['label']} | {r['k']} | {groups} | {format_total_error(r)} | "
            f"{format_vs_mtl(r)} | {r['validation_total_error']:.2f} | {planted} | "
            f"{r['seconds']:.0f} | {r['trunk_passes']:,} |"
        )
    return lines


def markdown(report: dict) -> str:
    """report.md: the main table, groupings per seed, per-task test accuracy, formulas and notes."""
    tasks, rows, seeds = report["tasks"], report["rows"], report["seeds"]
    lines = ["# Grouping study", "", f"Tasks ({len(tasks)}): {', '.join(tasks)}."]
    if report["planted_groups"] is not None:
        lines.append(f"Planted groups: {format_groups(report['planted_groups'])}.")
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
    lines += main_table(rows)
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


def write_report(report: dict, workdir: str) -> None:
    reporting.write_json_atomic(os.path.join(workdir, "report.json"), report)
    reporting.write_text_atomic(os.path.join(workdir, "report.md"), markdown(report))
    plots.save(
        plots.total_error_vs_compute(report["rows"]),
        os.path.join(workdir, "total_error_vs_compute.png"),
    )


if __name__ == "__main__":
    cli.run(run_study)
