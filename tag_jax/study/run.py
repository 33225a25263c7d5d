"""Running a study: every stage of the plan as a training run, resumably, then the report.

`run_study(config, workdir)` is the entry point of `python -m tag_jax.study`. Before the first
stage it logs the plan with each stage's rough cost (tag_jax.study.estimate); as each stage
starts and ends, a line with its number, the time elapsed and the time left
(tag_jax.study.progress); after every finished stage it rewrites report.md, report.json and the
plot with the rows done so far, marked partial until the last stage.
"""

import os

import jax
from absl import logging

from tag_jax import (
    autotune,
    autotune_cache,
    config_checks,
    data,
    default_config,
    manifest,
    methods,
    plots,
    reporting,
    stacking,
    step_timing,
)
from tag_jax import workdir as workdirs
from tag_jax.data import synthetic
from tag_jax.errors import UserError
from tag_jax.study import resume
from tag_jax.study.estimate import Workload, estimate_stages, plan_lines
from tag_jax.study.plan import Plan, Stage, build_plan, stage_config, validate
from tag_jax.study.progress import StudyProgress
from tag_jax.study.report import build_report, main_table, markdown


def done_before(workdir: str, stage: Stage) -> bool:
    """Whether the stage finished (its results.json, written last, is its only record of that)."""
    return os.path.exists(os.path.join(workdir, stage.name, "results.json"))


def run_stage(config, stage: Stage, workdir: str):
    """Trains the stage; its results, or None if it stopped at max_steps."""
    logging.vlog(1, "Stage %s: %s", stage.name, stage.settings)
    from tag_jax import train  # pylint: disable=g-import-not-at-top (JAX, the methods: slow)

    results = train.train_and_evaluate(
        stage_config(config, stage), os.path.join(workdir, stage.name)
    )
    return results if "test" in results else None


def run_study(config, workdir: str, restart: bool = False):
    """Runs (or resumes) every stage of config.study.methods, then writes the report.

    Every stage's config is checked before any stage trains; stages finished before are skipped.

    Args:
      config: the study's config (config.study: methods, k values, epochs, seeds, overrides; the
        rest as for one run).
      workdir: the study's folder: one subfolder per stage, report.md, report.json and
        total_error_vs_compute.png.
      restart: delete the report and the stages' checkpoints and outputs (only what the study
        wrote) once the checks passed, and start over.

    Returns:
      report.json's content (tag_jax.study.report.build_report), or None when a stage stopped
      at config.max_steps (re-run to continue).
    """
    config_checks.check(config, default_config.COMMON_BLOCKS)  # each stage's: below
    validate(config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} is a file; pick a folder")
    config_checks.check_workdir_path(os.path.join(workdir, "a_stage_name"))
    dataset = data.load_dataset(config)
    task_names = dataset.task_names
    study_plan = build_plan(config, task_names, workdir)
    from tag_jax import run_checks  # pylint: disable=g-import-not-at-top (JAX, the methods: slow)

    for stage in study_plan.stages:
        methods.check_task_count(stage_config(config, stage), task_names)
        if "groups.groups_file" not in stage.settings:  # the others' groups.json is written later
            run_checks.validate_config(stage_config(config, stage))
    resume.check_outputs_are_ours(workdir, restart=restart)  # before the lock, too
    if not restart:
        resume.check_stages(config, study_plan, workdir, dataset.num_examples("train"))
    lock = workdirs.acquire(workdir) if jax.process_index() == 0 else None
    try:
        if lock:
            resume.check_outputs_are_ours(workdir, restart=restart)
            if restart:
                start_over(workdir)
            manifest.remove_temporaries(workdir)
            resume.claim_outputs(workdir, study_plan)
        estimates = stage_estimates(config, dataset, study_plan)
        return run_stages(config, task_names, study_plan, workdir, estimates)
    finally:
        if lock:
            lock.release()


def start_over(workdir: str) -> None:
    """--restart: deletes what the study wrote: the report and every stage's outputs (exactly
    those: tag_jax.manifest)."""
    deleted = manifest.remove_written(workdir)
    if deleted:
        logging.info("--restart: deleted %s in %s.", ", ".join(deleted), workdir)


def stage_estimates(config, dataset, study_plan: Plan) -> list:
    """Each stage's rough cost (tag_jax.study.estimate) on this dataset and machine."""
    workload = Workload(
        *(dataset.num_examples(split) for split in ("train", "validation", "test")),
        len(dataset.task_names),
        tuple(dataset.image_shape),
    )
    timing = autotune.mode() == "time"
    return estimate_stages(
        [(stage.name, stage_config(config, stage)) for stage in study_plan.stages],
        workload,
        autotune_cache.load_cache() if timing else {},
        where=autotune_cache.machine_fields(),
        device_batch=step_timing.per_device_batch,
        autotune_budget=config.autotune_budget_seconds if timing else 0.0,
        cpu_network_strategy=(
            (
                lambda stage, count: stacking.resolve(
                    stage.groups.network_strategy, count, differentiated=True
                )
            )
            if jax.default_backend() == "cpu"
            else None
        ),
    )


def run_stages(config, task_names, study_plan: Plan, workdir: str, estimates: list):
    """Runs the stages not done yet, saying where it is, with a partial report after each; then
    writes the whole report and returns it (None if paused)."""
    progress, writer = StudyProgress(estimates), jax.process_index() == 0
    for line in plan_lines(estimates):
        logging.info("%s", line)
    for index, stage in enumerate(study_plan.stages):
        if done_before(workdir, stage):
            logging.info("%s", progress.skipped(index))
            continue
        logging.info("%s", progress.started(index))
        if run_stage(config, stage, workdir) is None:
            logging.info("Stage %s stopped at config.max_steps; re-run to continue.", stage.name)
            return None
        logging.info("%s", progress.finished(index))
        if writer and index + 1 < len(study_plan.stages):
            partial = build_report(
                config, task_names, study_plan, workdir, planted_groups(config, task_names)
            )
            write_report(partial, workdir)
    report = build_report(
        config, task_names, study_plan, workdir, planted_groups(config, task_names)
    )
    if writer:
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
    """report.json, report.md and, once it has a row, the plot."""
    reporting.write_json_atomic(os.path.join(workdir, "report.json"), report)
    reporting.write_text_atomic(os.path.join(workdir, "report.md"), markdown(report))
    if report["rows"]:
        plots.save(
            plots.total_error_vs_compute(report["rows"]),
            os.path.join(workdir, "total_error_vs_compute.png"),
        )
