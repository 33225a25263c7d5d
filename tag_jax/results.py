"""What a finished run reports: the reported parameters evaluated, results.json, metric names.

`final_results` evaluates the parameters the run reports (best or final) on validation and test,
lets the method write its outputs, writes results.json and prints the answer.
"""

import os

import jax
import numpy as np
from absl import logging

from tag_jax import evaluation, manifest, reporting
from tag_jax import workdir as workdirs
from tag_jax.loop_state import LoopState, Run
from tag_jax.methods.base import FinalEvaluation, groups_of, seed_serving

# Metric leaves logged under another name: train/loss/<task> for the per-task losses.
METRIC_NAMES = {"task_losses": "loss"}


def named_scalars(prefix: str, metrics: dict, task_names) -> dict:
    """Every leaf as scalars: () -> prefix/name; (T,) -> prefix/name/<task>; else
    prefix/name/<i>."""
    scalars = {}
    for key, value in metrics.items():
        name = f"{prefix}/{METRIC_NAMES.get(key, key)}"
        value = np.asarray(value, np.float64)
        if value.ndim == 0:
            scalars[name] = float(value)
        elif value.shape == (len(task_names),):
            scalars.update({f"{name}/{t}": float(v) for t, v in zip(task_names, value)})
        else:
            scalars.update({f"{name}/{i}": float(v) for i, v in enumerate(value.ravel())})
    return scalars


def served_results(final: FinalEvaluation, serving, baseline: dict) -> dict:
    """validation and test summaries of the tasks on their `serving` networks, and whether the
    validation Total Error is clearly below the majority baseline's ('learned')."""
    validation = evaluation.serving_summary(final.validation, serving)
    return {
        "validation": validation,
        "test": evaluation.serving_summary(final.test, serving),
        "learned": evaluation.learned(validation["total_error"], baseline),
    }


def seed_results(run: Run, final: FinalEvaluation, baseline: dict) -> list:
    """Each seed's copy of the networks reported as its own run (tag_jax.methods.base): seed,
    groups, best_epoch, validation, test, learned."""
    method = run.method
    per_seed = len(method.members) // method.seeds
    results = []
    for copy in range(method.seeds):
        serving = seed_serving(method, copy)
        results.append(
            {
                "seed": run.config.seed + copy,
                "groups": groups_of(method.members, serving, run.task_names),
                "best_epoch": max(final.best_epoch[copy * per_seed : (copy + 1) * per_seed]),
                **served_results(final, serving, baseline),
            }
        )
    return results


def stop_reason(loop: LoopState, config) -> str:
    """Why training ended: the method's reason, early stopping, or the last epoch."""
    if loop.stop_reason:
        return loop.stop_reason
    if loop.stopped_early:
        return (
            "early stopping: no network's validation loss improved for "
            f"{config.early_stopping.patience} epochs"
        )
    return f"the last epoch ran (config.num_epochs={config.num_epochs})"


def final_results(run: Run, state, loop: LoopState) -> dict:
    """Evaluates the reported parameters, lets the method write its outputs, writes
    results.json (process 0) and prints the answer; returns the results."""
    config, method = run.config, run.method  # state is finite: saved (save) or restored so
    best_epoch = loop.early_stopping["best_epoch"]
    use_best = config.early_stopping.restore_best and max(best_epoch) > 0
    params, batch_stats = (
        (state.best_params, state.best_batch_stats)
        if use_best
        else (state.params, state.batch_stats)
    )
    final = FinalEvaluation(
        params=params,
        batch_stats=batch_stats,
        validation=run.evaluate(params, batch_stats, "validation"),
        test=run.evaluate(params, batch_stats, "test"),
        best_epoch=best_epoch,
    )
    step = int(state.step)
    plain, measured = method.trunk_passes
    groups = (
        method.served_groups(params)
        if method.served_groups
        else groups_of(method.members, method.serving, run.task_names)
    )
    baseline = evaluation.majority_baseline(run.dataset, config.model.num_classes)
    restored_epoch = max(best_epoch) if use_best else None
    if use_best and restored_epoch != loop.epoch:
        logging.info(
            "Reporting the parameters of epoch %d (best validation loss), not those of the "
            "last epoch %d.",
            restored_epoch,
            loop.epoch,
        )
    results = {
        "method": config.method,
        "tasks": list(run.task_names),
        "groups": groups,
        "epochs": loop.epoch,
        "steps": step,
        "best_epoch": max(best_epoch),
        "stopped_early": loop.stopped_early,
        "stop_reason": stop_reason(loop, config),
        "restored_epoch": restored_epoch,
        **served_results(final, method.serving, baseline),
        "majority_baseline": baseline,
        "compute": {
            "trunk_passes": round(
                plain * (step - loop.measured_steps) + measured * loop.measured_steps
            ),
            "trunk_passes_per_step": [plain, measured],
            "measured_steps": loop.measured_steps,
            "train_seconds": run.session.seconds(),
        },
        "autotune": method.autotune,
    }
    if method.seeds > 1:
        results["seed_results"] = seed_results(run, final, baseline)
    if len(best_epoch) > 1:
        results["network_best_epoch"] = best_epoch
    if run.session.changed_on_resume:  # which steps ran under which values (tag_jax.workdir)
        results[workdirs.CHANGES] = run.session.changed_on_resume
    run.session.writer.write_scalars(
        step,
        {
            "test/total_error": results["test"]["total_error"],
            **named_scalars("test", {"accuracy": results["test"]["task_accuracy"]}, run.task_names),
        },
    )
    run.session.writer.flush()
    if jax.process_index() == 0:
        if method.finish:
            results["outputs"] = method.finish(run.context(step), state, loop.method, final)
        workdirs.write_config(run.workdir, config, run.session.changed_on_resume)
        reporting.write_json_atomic(os.path.join(run.workdir, "results.json"), results)
        manifest.settle(run.workdir)
        print("\n".join(reporting.answer_lines(results, run.workdir)), flush=True)
    return results
