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
- 'uw', 'gradnorm', 'pcgrad', 'dmtg': when registered in tag_jax.methods
  (skipped with a note otherwise); DMTG for each k: a search with
  dmtg.num_groups = k (reported as 'dmtg one-shot') and its groups retrained.
Grouping runs take config.study.epochs_search epochs, the others
config.study.epochs_train (0 = config.num_epochs). config.study.overrides.<method>
changes the config of that method's own runs (not of the groups it selected).

Resumable: a stage whose results.json exists is skipped; an interrupted one
resumes from its checkpoints. Training seconds (a stage's
`train_seconds_this_run`, or the wall time of an invocation that ended without
results) are summed over invocations in `study_stages.json`.
"""

import dataclasses
import json
import os
import sys
import time

import jax
from absl import app, flags, logging

from tag_jax import data, methods, plots, reporting, train
from tag_jax import main as cli
from tag_jax.data import synthetic
from tag_jax.errors import UserError

STUDY_METHODS = ("mtl", "single", "tag", "cs", "hoa", "random", "uw", "gradnorm", "pcgrad", "dmtg")
OPTIONAL_METHODS = ("uw", "gradnorm", "pcgrad", "dmtg")  # run only when registered
GROUPING_LABELS = ("tag", "cs", "hoa", "random", "dmtg", "dmtg one-shot")  # rows with a planted check
BOOKKEEPING = "study_stages.json"

# Trunk passes: a training step of one trunk (forward + backward) on one batch counts 1; a
# lookahead forward or an extra per-task backward pull counts 1 more. Evaluation is not counted.
# S = steps taken, T = tasks, G = networks, R = steps with a recorded affinity, N = affinity sources.
PASS_FORMULAS = {
    "mtl": "S", "uw": "S", "gradnorm": "S * (1 + T)", "pcgrad": "S * (1 + T)",
    "tag": "S + R * (N + T)", "cs": "S + R * T", "groups": "S * G", "random": "S * G",
    "pairs": "S * (T (T - 1) / 2 + T)", "dmtg": "S * K (K = dmtg.num_groups branches)",
}


@dataclasses.dataclass(frozen=True)
class Stage:
  """One run: its folder name, config changes (flattened keys), whether it is a grouping run and
  the study method whose config.study.overrides apply ('' = none)."""

  name: str
  settings: dict
  search: bool = False
  method: str = ""


@dataclasses.dataclass(frozen=True)
class Entry:
  """A report row: `share` of the compute of `stages` spent on it, the last one's results reported."""

  label: str
  k: int
  stages: tuple
  share: float = 1.0


def plan(config, task_names, workdir) -> tuple[list, list, list]:
  """(stages in run order, report entries, notes on skipped or reused runs)."""
  stages, entries, notes = [], [], []
  ks = tuple(config.study.max_groups)

  def trained_groups(name: str, search: str, k: int, label: str, max_groups: int):
    stages.append(Stage(name, {"method": "groups", "groups.max_groups": max_groups,
                               "groups.groups_file": os.path.join(workdir, search, "groups.json")}))
    entries.append(Entry(label, k, (search, name)))

  for method in config.study.methods:
    if method in OPTIONAL_METHODS and method not in methods.METHODS:
      notes.append(f"{method}: not registered in tag_jax.methods, skipped")
    elif method == "mtl" or method in ("uw", "gradnorm", "pcgrad"):
      stages.append(Stage(method, {"method": method}, method=method))
      entries.append(Entry(method, 1, (method,)))
    elif method == "single" and "hoa" in config.study.methods and (
        config.study.epochs_search == config.study.epochs_train) and not (
            {"single", "hoa"} & set(config.study.overrides.keys())):
      entries.append(Entry("single", len(task_names), ("hoa",), share=2 / (len(task_names) + 1)))
      notes.append("single: read from the 'hoa' run, whose single-task networks are these networks "
                   "(same initialisation, data order and per-network early stopping); compute: "
                   "their share 2 / (T + 1) of that run")
    elif method == "single":
      stages.append(Stage("single", {"method": "groups",
                                     "groups.groups": tuple((t,) for t in task_names)},
                          method="single"))
      entries.append(Entry("single", len(task_names), ("single",)))
    elif method in ("tag", "cs", "hoa"):
      stages.append(Stage(method, {"method": "pairs" if method == "hoa" else method,
                                   "selection.max_groups": ks}, search=True, method=method))
      for k in ks:
        trained_groups(f"{method}_k{k}", method, k, method, k)
    elif method == "random":
      for k in ks:
        stages.append(Stage(f"random_k{k}", {"method": "random", "groups.num_random_groups": k},
                            method="random"))
        entries.append(Entry("random", k, (f"random_k{k}",)))
    elif method == "dmtg":
      for k in ks:
        stages.append(Stage(f"dmtg_k{k}", {"method": "dmtg", "dmtg.num_groups": k}, search=True,
                            method="dmtg"))
        entries.append(Entry("dmtg one-shot", k, (f"dmtg_k{k}",)))
        trained_groups(f"dmtg_k{k}_groups", f"dmtg_k{k}", k, "dmtg", 0)
  return stages, entries, notes


def validate(config) -> None:
  unknown = [m for m in config.study.methods if m not in STUDY_METHODS]
  if unknown or not config.study.methods:
    raise UserError(f"config.study.methods {tuple(config.study.methods)} must be a non-empty "
                    f"subset of {STUDY_METHODS}")
  unknown = [m for m in config.study.overrides if m not in STUDY_METHODS]
  if unknown:
    raise UserError(f"config.study.overrides has {unknown}; its keys must be study methods "
                    f"{STUDY_METHODS}")
  if not config.study.max_groups or min(config.study.max_groups) < 1:
    raise UserError(f"config.study.max_groups must be k values >= 1, got "
                    f"{tuple(config.study.max_groups)}")


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
      raise UserError(f"config.study.overrides.{stage.method} does not fit the config: {reason}; "
                      "use existing keys with values of their type") from e
    if not was_locked:
      result.unlock()
  return result


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def add_seconds(workdir: str, stage: str, seconds: float) -> None:
  """Adds one invocation's training seconds to the stage's total in study_stages.json."""
  path = os.path.join(workdir, BOOKKEEPING)
  books = read_json(path) if os.path.exists(path) else {}
  entry = books.setdefault(stage, {"seconds": 0.0, "invocations": 0})
  entry["seconds"] += seconds
  entry["invocations"] += 1
  reporting.write_json_atomic(path, books)


def run_stage(config, stage: Stage, workdir: str):
  """The stage's results (read back if it already finished), or None if it stopped at max_steps."""
  folder = os.path.join(workdir, stage.name)
  path = os.path.join(folder, "results.json")
  if os.path.exists(path):
    logging.info("Stage %s: done before, skipped.", stage.name)
    return read_json(path)
  logging.info("Stage %s: %s", stage.name, stage.settings)
  start, results = time.time(), {}
  try:
    results = train.train_and_evaluate(stage_config(config, stage), folder)
  finally:
    if jax.process_index() == 0:
      add_seconds(workdir, stage.name, results.get("train_seconds_this_run", time.time() - start))
  return results if "test" in results else None


def run_study(config, workdir: str):
  """Runs (or resumes) every stage, then writes the report; returns it (None if paused)."""
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  task_names = data.load_dataset(config).task_names
  stages, entries, notes = plan(config, task_names, workdir)
  for stage in stages:
    if "groups.groups_file" not in stage.settings:  # the others' groups.json is written later
      train.validate_config(stage_config(config, stage))
  for stage in stages:
    if run_stage(config, stage, workdir) is None:
      logging.info("Stage %s stopped at config.max_steps; re-run to continue.", stage.name)
      return None
  report = build_report(config, task_names, stages, entries, notes, workdir)
  if jax.process_index() == 0:
    write_report(report, workdir)
  return report


# --- the report ---


def planted_groups(config, task_names):
  """The synthetic dataset's planted groups restricted to the tasks, or None for other datasets."""
  if config.dataset.name != "synthetic":
    return None
  planted = [[t for t in g if t in task_names]
             for g in synthetic.planted_groups(tuple(config.dataset.group_sizes))]
  return [g for g in planted if g]


def trunk_passes(method: str, results: dict, folder: str, stage_cfg) -> int:
  """Trunk passes of one finished stage (PASS_FORMULAS)."""
  steps, num_tasks = results["steps"], len(results["tasks"])
  if method in ("tag", "cs"):
    record = read_json(os.path.join(folder, "affinity.json"))
    sources = len(record.get("sources", record["tasks"])) if method == "tag" else 0
    return steps + record["steps_recorded"] * (sources + num_tasks)
  if method in ("groups", "random"):
    return steps * len(read_json(os.path.join(folder, "groups_trained.json"))["groups"])
  per_step = {"mtl": 1, "uw": 1, "gradnorm": 1 + num_tasks, "pcgrad": 1 + num_tasks,
              "pairs": num_tasks * (num_tasks - 1) // 2 + num_tasks,
              "dmtg": stage_cfg.dmtg.num_groups}
  return steps * per_step[method]


def reported_groups(method: str, results: dict, folder: str) -> list:
  """The trained groups that serve a task ('pairs': the single-task networks)."""
  if method in ("groups", "random", "pairs"):
    trained = read_json(os.path.join(folder, "groups_trained.json"))
    return [g for g in trained["groups"] if g in trained["serving"].values()]
  if method == "dmtg":
    return read_json(os.path.join(folder, "groups.json"))["selections"][0]["groups"]
  return [list(results["tasks"])]


def build_report(config, task_names, stages, entries, notes, workdir) -> dict:
  """report.json's content: one row per entry, with groups, test metrics and compute."""
  by_name = {s.name: s for s in stages}
  books = read_json(os.path.join(workdir, BOOKKEEPING))
  planted = planted_groups(config, task_names)
  rows = []
  for entry in entries:
    stage_rows = []
    for name in entry.stages:
      folder = os.path.join(workdir, name)
      cfg = stage_config(config, by_name[name])
      results = read_json(os.path.join(folder, "results.json"))
      stage_rows.append((cfg.method, results, folder, cfg))
    method, results, folder, _ = stage_rows[-1]
    groups = reported_groups(method, results, folder)
    rows.append({
        "label": entry.label, "k": entry.k, "stages": list(entry.stages), "groups": groups,
        "recovers_planted": (None if planted is None or entry.label not in GROUPING_LABELS else
                             {frozenset(g) for g in groups} == {frozenset(g) for g in planted}),
        "test_total_error": results["test"]["total_error"],
        "validation_total_error": results["validation"]["total_error"],
        "test_task_accuracy": dict(zip(results["tasks"], results["test"]["task_accuracy"])),
        "seconds": entry.share * sum(books[name]["seconds"] for name in entry.stages),
        "trunk_passes": round(entry.share * sum(trunk_passes(*row) for row in stage_rows)),
        "pass_formula": (f"{entry.share:.3g} x " if entry.share != 1 else "") + " + ".join(
            f"{name}: {PASS_FORMULAS[row[0]]}" for name, row in zip(entry.stages, stage_rows)),
    })
  return {"tasks": list(task_names), "planted_groups": planted, "rows": rows, "notes": notes,
          "pass_formulas": PASS_FORMULAS, "stages": books}


def format_groups(groups) -> str:
  return " ".join("{" + ", ".join(g) + "}" for g in groups)


def markdown(report: dict) -> str:
  """report.md: the main table, per-task test accuracy, formulas and notes."""
  tasks, rows = report["tasks"], report["rows"]
  lines = ["# Grouping study", "", f"Tasks ({len(tasks)}): {', '.join(tasks)}."]
  if report["planted_groups"] is not None:
    lines.append(f"Planted groups: {format_groups(report['planted_groups'])}.")
  lines += ["", "Total Error = sum over tasks of test error % (lower is better). Compute: training "
            "seconds summed over resumes and the stages a row needs (grouping run + training), "
            "and trunk passes (formulas below).", "",
            "| method | k | groups | Total Error (test) | val | planted? | seconds | trunk passes |",
            "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    planted = {None: "-", True: "yes", False: "no"}[r["recovers_planted"]]
    lines.append(f"| {r['label']} | {r['k']} | {format_groups(r['groups'])} | "
                 f"{r['test_total_error']:.2f} | {r['validation_total_error']:.2f} | {planted} | "
                 f"{r['seconds']:.0f} | {r['trunk_passes']:,} |")
  lines += ["", "## Test accuracy per task", "", "| method | k | " + " | ".join(tasks) + " |",
            "|---|---|" + "---|" * len(tasks)]
  for r in rows:
    accuracy = " | ".join(f"{r['test_task_accuracy'][t]:.3f}" for t in tasks)
    lines.append(f"| {r['label']} | {r['k']} | {accuracy} |")
  lines += ["", "## Trunk passes", "",
            "One training step of one trunk (forward + backward) on one batch counts 1; each "
            "lookahead forward or extra per-task backward pull counts 1 more; evaluation is not "
            "counted. S = steps, T = tasks, G = networks, R = recorded affinity steps, N = "
            "affinity sources.", ""]
  lines += [f"- {method}: {formula}" for method, formula in report["pass_formulas"].items()]
  if report["notes"]:
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
  return "\n".join(lines) + "\n"


def write_report(report: dict, workdir: str) -> None:
  reporting.write_json_atomic(os.path.join(workdir, "report.json"), report)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(markdown(report))
  plots.total_error_vs_compute(report["rows"], os.path.join(workdir, "total_error_vs_compute.png"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(cli._QuietLibraries())  # pylint: disable=protected-access
  cli.initialize_distributed()
  try:
    run_study(flags.FLAGS.config, flags.FLAGS.workdir)
  except UserError as e:
    print(f"error: {cli.one_line(e)}", file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
