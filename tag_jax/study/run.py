"""Running a study: every stage of the plan as a training run, resumably, then the report.

`run_study(config, workdir)` is the entry point of `python -m tag_jax.study`.
"""

import os

import jax
from absl import logging

from tag_jax import config_checks, data, plots, reporting
from tag_jax import workdir as workdirs
from tag_jax.data import synthetic
from tag_jax.errors import UserError
from tag_jax.study.plan import Plan, Stage, build_plan, stage_config, validate
from tag_jax.study.report import build_report, main_table, markdown, read_json


def run_stage(config, stage: Stage, workdir: str):
    """The stage's results (read back if it already finished), or None if it stopped at
    max_steps."""
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
    study_plan = build_plan(config, task_names, workdir)
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
    report = build_report(
        config, task_names, study_plan, workdir, planted_groups(config, task_names)
    )
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


def planted_groups(config, task_names):
    """The synthetic dataset's planted groups restricted to the tasks, or None for other
    datasets."""
    if config.dataset.name != "synthetic":
        return None
    planted = [
        [t for t in g if t in task_names]
        for g in synthetic.planted_groups(tuple(config.dataset.group_sizes))
    ]
    return [g for g in planted if g]


def write_report(report: dict, workdir: str) -> None:
    reporting.write_json_atomic(os.path.join(workdir, "report.json"), report)
    reporting.write_text_atomic(os.path.join(workdir, "report.md"), markdown(report))
    plots.save(
        plots.total_error_vs_compute(report["rows"]),
        os.path.join(workdir, "total_error_vs_compute.png"),
    )
