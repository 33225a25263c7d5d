"""train_and_evaluate(config, workdir): the training loop shared by every method.

Set-up (config and data checked, method built, steps jitted, workdir locked), restore (the
latest checkpoint, or a fresh state), epochs of padded batches through a jitted pure step,
evaluation of every network on the validation split each epoch with early stopping per network
(tag_jax.early_stopping), orbax checkpoints (resumable mid-epoch), and at the end the reported
parameters evaluated and results.json written (tag_jax.results). Divergence checks live in
tag_jax.divergence, the workdir's identity and lock in tag_jax.workdir, the loop's checkpointed
record in tag_jax.loop_state. The method contract: tag_jax.methods.base.
"""

import contextlib
import dataclasses
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from tag_jax import (
    checkpointing,
    console,
    divergence,
    early_stopping,
    evaluation,
    interrupts,
    methods,
    metric_writing,
    preflight,
    reporting,
    run_checks,
    sharding,
)
from tag_jax import workdir as workdirs
from tag_jax.errors import TrainingDiverged
from tag_jax.loop_state import LoopState, Run
from tag_jax.results import final_results, named_scalars


def set_up(config, workdir: str, *, restart: bool = False) -> Run:
    """Validates the config, checks the memory it needs (tag_jax.preflight), reads and checks the
    data, builds the method and its jitted steps (compiled on first use), then (only then) locks
    and prepares the workdir."""
    run_checks.validate_config(config)
    workdirs.check_workdir(workdir)
    preflight.check_dataset_memory(config)
    dataset, steps_per_epoch = run_checks.load_checked_data(config)
    preflight.check_run_memory(config, dataset)
    config = run_checks.with_training_length(config, steps_per_epoch)
    mesh = sharding.create_mesh(config.mesh)
    sharding.check_divisible(config.batch_size, mesh, "batch_size")
    sharding.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
    method = methods.build(config, dataset.task_names, dataset.image_shape, steps_per_epoch)
    run_checks.validate_run_length(config, method, steps_per_epoch)
    state_sharding = (
        method.state_sharding(mesh) if method.state_sharding else sharding.replicated(mesh)
    )

    def jit_step(step):
        return step and sharding.jit_train_step(
            step,
            state_sharding,
            mesh,
            streams=method.seeds > 1,
            compiler_options=method.compiler_options,
        )

    lock = workdirs.prepare_workdir(workdir, config, restart=restart)
    try:
        return Run(
            config=config,
            workdir=workdir,
            dataset=dataset,
            mesh=mesh,
            method=method,
            steps_per_epoch=steps_per_epoch,
            state_sharding=state_sharding,
            train_step=jit_step(method.train_step),
            measured_step=jit_step(method.measured_step),
            eval_step=jax.jit(
                method.eval_step,
                out_shardings=sharding.replicated(mesh),
                compiler_options=method.compiler_options,
            ),
            manager=checkpointing.create_manager(workdir, config.keep_checkpoints),
            lock=lock,
        )
    except BaseException:
        if lock:
            lock.release()
        raise


def restore_or_init(run: Run):
    """(state, LoopState): the latest checkpoint's, or a fresh state and loop record. Only then
    does the run write (tag_jax.workdir.begin_writing: config.json, metrics.jsonl cut back to the
    checkpoint, the manifest) and open the metric writers, so a checkpoint that fails to restore
    leaves the workdir as it was."""
    state = jax.jit(
        run.method.init_state,
        out_shardings=run.state_sharding,
        compiler_options=run.method.compiler_options,
    )(jax.random.key(run.config.seed))
    restored = checkpointing.restore_latest(run.manager, state, read_meta=LoopState.from_json)
    if restored is None:
        if os.path.exists(os.path.join(run.workdir, "results.json")):
            logging.warning(
                "%s holds results but no checkpoint: training again from step 0; its "
                "results will be replaced when this run ends.",
                run.workdir,
            )
        loop = LoopState.fresh(early_stopping.initial_record(len(run.method.members)))
    else:
        state, loop = restored
        run.session.last_saved = int(state.step)
        logging.info(
            "Resumed from step %d (epoch %d, batch %d).", int(state.step), loop.epoch, loop.batch
        )
    run.session.seconds_before = loop.train_seconds
    if jax.process_index() == 0:
        run.session.changed_on_resume = workdirs.begin_writing(
            run.workdir,
            run.config,
            int(state.step),
            resumed=restored is not None,
            metrics_records=loop.metrics_records,
        )
    run.session.writer = metric_writing.create_writer(run.workdir)
    if jax.process_index() == 0:
        workdirs.claim_event_files(run.workdir)
    return state, loop


def save(run: Run, state, loop: LoopState) -> None:
    """A checkpoint of state and the loop record, with the training seconds so far and the number
    of records in metrics.jsonl (a resumed run drops those logged after it); the writers are
    flushed first. TrainingDiverged instead when the state holds NaN or infinite values."""
    session = run.session
    session.writer.flush()
    records = (
        reporting.count_records(os.path.join(run.workdir, "metrics.jsonl"))
        if jax.process_index() == 0
        else None
    )
    step = int(state.step)
    if not bool(np.asarray(checkpointing.all_finite(state))):
        kept = (
            f"the last checkpoint (step {session.last_saved}) is kept"
            if session.last_saved is not None
            else "no checkpoint was saved yet"
        )
        raise TrainingDiverged(
            f"the parameters became non-finite by step {step} and are not saved; {kept}: "
            + divergence.RESTART_HINT.format(lr=run.config.optimizer.learning_rate)
        )
    loop = dataclasses.replace(loop, train_seconds=session.seconds(), metrics_records=records)
    checkpointing.save(run.manager, step, state, loop.to_json())
    session.last_saved = step


def fetch_later(metrics: dict) -> dict:
    """`metrics` with their copy to the host started (reading them later does not wait for it)."""
    for value in jax.tree.leaves(metrics):
        value.copy_to_host_async()
    return metrics


def write_log(run: Run, step: int, metrics: dict, monitor: divergence.LossMonitor) -> None:
    """Checks the losses up to log step `step` (divergence.LossMonitor), then writes its
    metrics."""
    monitor.check(run.session.last_saved, up_to=step)
    logged = jax.device_get(metrics)
    run.session.writer.write_scalars(step, named_scalars("train", logged, run.task_names))


def run_step(run: Run, kind: str, state, batch):
    """One step of `kind` ('training' or 'measured'); the first of each kind compiles, which is
    announced and timed."""
    step_fn = run.measured_step if kind == "measured" else run.train_step
    if kind in run.session.compiled:
        return step_fn(state, batch)
    logging.info(
        "Compiling the %s %s step (first step only; can take a minute on CPU)...",
        run.config.method,
        kind,
    )
    start = time.time()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    logging.info("Compiled and ran the first %s step in %.1f s.", kind, time.time() - start)
    run.session.compiled.add(kind)
    return state, metrics


def train_epoch(run: Run, state, loop: LoopState, report_progress):
    """The rest of the current epoch, or up to config.max_steps; returns (state, loop).

    Batches are read and copied to the devices config.prefetch_batches ahead, in a background
    thread (sharding.device_batches). A log step's metrics are written, and the losses so far
    checked for NaN/inf (divergence.LossMonitor), once the next step is queued (so the device is
    never left idle while the host logs), and before every checkpoint and at the epoch's end, so
    a diverged run keeps its last good checkpoint."""
    config, method = run.config, run.method
    step = int(state.step)
    monitor = divergence.LossMonitor(
        run.task_names,
        run.workdir,
        divergence.LossTrend.from_json(loop.loss_trend),
        config.optimizer.learning_rate,
    )
    to_log = None
    batches = sharding.device_batches(
        run.training_batches(loop.epoch, loop.batch),
        run.mesh,
        ahead=config.prefetch_batches,
        streams=method.seeds > 1,
    )
    with contextlib.closing(batches):
        for batch in batches:
            interrupts.raise_if_received()  # a Ctrl-C that a garbage-collection callback swallowed
            if interrupts.termination_requested():  # SIGTERM: save this step, then stop
                if to_log:
                    write_log(run, *to_log, monitor)
                stop_terminated(run, state, loop, monitor)
            measure_now = bool(run.measured_step) and step % method.measure_every == 0
            state, metrics = run_step(run, "measured" if measure_now else "training", state, batch)
            step += 1
            monitor.add(step, metrics["task_losses"])
            loop = dataclasses.replace(
                loop, batch=loop.batch + 1, measured_steps=loop.measured_steps + measure_now
            )
            report_progress(step)
            if to_log:  # the previous step's, fetched now that this step is queued behind it
                write_log(run, *to_log, monitor)
                to_log = None
            if step % config.log_every_steps == 0:
                to_log = (step, fetch_later(metrics))
            if step == config.max_steps:
                break
            if (
                config.checkpoint_every_steps
                and step % config.checkpoint_every_steps == 0
                and loop.batch < run.steps_per_epoch
            ):
                if to_log:
                    write_log(run, *to_log, monitor)
                    to_log = None
                monitor.check(run.session.last_saved)
                save(run, state, dataclasses.replace(loop, loss_trend=monitor.trend.to_json()))
    if to_log:
        write_log(run, *to_log, monitor)
    monitor.check(run.session.last_saved)
    run.session.train_loss = monitor.mean_loss()
    return state, dataclasses.replace(loop, loss_trend=monitor.trend.to_json())


def stop_terminated(run: Run, state, loop: LoopState, monitor=None) -> None:
    """After a SIGTERM (tag_jax.interrupts): the losses so far checked (monitor, inside an
    epoch), a checkpoint of this step (unless it has one), then interrupts.Terminated with the
    line the command prints."""
    if monitor:
        monitor.check(run.session.last_saved)
        loop = dataclasses.replace(loop, loss_trend=monitor.trend.to_json())
    step = int(state.step)
    if run.session.last_saved != step:
        save(run, state, loop)
    raise interrupts.Terminated(
        f"terminated (SIGTERM): saved a checkpoint at step {step}; re-run the same command to "
        "resume from it"
    )


def end_epoch(run: Run, state, loop: LoopState):
    """Validation of every network, early stopping and best parameters, the method's hook, and
    the epoch's checkpoint; returns (state, loop)."""
    step, epoch = int(state.step), loop.epoch + 1
    method, config = run.method, run.config
    networks = run.evaluate(state.params, state.batch_stats, "validation")
    val = evaluation.serving_summary(networks, method.serving)
    record, improved, stopped = early_stopping.update(
        loop.early_stopping,
        evaluation.network_losses(networks, method.members),
        epoch,
        config.early_stopping.patience,
        may_stop=step >= config.early_stopping.min_steps,
    )
    if improved.any():
        state = state.replace(
            best_params=early_stopping.keep_best(
                improved, state.params, state.best_params, stacked=method.stacked
            ),
            best_batch_stats=early_stopping.keep_best(
                improved, state.batch_stats, state.best_batch_stats, stacked=method.stacked
            ),
        )
    run.session.writer.write_scalars(
        step,
        {
            "val/loss": val["loss"],
            "val/total_error": val["total_error"],
            "epoch": epoch,
            **named_scalars("val", {"accuracy": val["task_accuracy"]}, run.task_names),
        },
    )
    logging.info(
        "%s",
        console.epoch_line(
            epoch, config.num_epochs, run.session.train_loss, val["total_error"], loop.history
        ),
    )
    divergence.check_above_chance(val["task_loss"], step, config)
    if stopped:
        logging.info(
            "Early stopping after epoch %d: no network improved its validation loss for "
            "%d epochs (best epoch %s).",
            epoch,
            config.early_stopping.patience,
            max(record["best_epoch"]),
        )
    method_record, stop_reason = loop.method, None
    if method.on_epoch_end:
        state, method_record = method.on_epoch_end(run.context(step), state, method_record)
    if method.stop_reason and not stopped and epoch < config.num_epochs:
        stop_reason = method.stop_reason(method_record)
        if stop_reason:
            logging.info("Stopping after epoch %d: %s.", epoch, stop_reason)
    summary = {"epoch": epoch, "step": step, "val_loss": val["loss"]}
    loop = dataclasses.replace(
        loop,
        epoch=epoch,
        batch=0,
        early_stopping=record,
        stopped_early=stopped,
        stop_reason=stop_reason,
        method=method_record,
        history=loop.history + [{**summary, "val_total_error": val["total_error"]}],
    )
    save(run, state, loop)
    return state, loop


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, restart: bool = False
) -> dict:
    """Trains `config.method` on `config.dataset` and writes everything under `workdir`.

    The workdir is locked while the run lives; re-running the same call resumes from the latest
    checkpoint.

    Args:
      config: the run's config (tag_jax.default_config plus a configs/ file's changes).
      workdir: folder for checkpoints, metrics and outputs (created if missing).
      restart: delete what the workdir holds (checkpoints, metrics, outputs) once every check
        passed, and start over.

    Returns:
      The results written to results.json, or {'stopped_at_step': n} when config.max_steps
      paused the run (re-run to resume).
    """
    run = set_up(config, workdir, restart=restart)
    try:
        return train_loop(run)
    finally:
        run.close()


def train_loop(run: Run) -> dict:
    """Restores or initialises the state, trains to the end (or config.max_steps), reports."""
    config = run.config
    state, loop = restore_or_init(run)
    report_progress = console.Progress(
        total_steps=config.num_epochs * run.steps_per_epoch,
        writer=run.session.writer,
        every_steps=config.log_every_steps,
    )
    # One process: a SIGTERM checkpoints at the next step (several would not agree on which).
    saving = interrupts.saving_on_termination() if jax.process_count() == 1 else None
    with saving or contextlib.nullcontext():
        while loop.epoch < config.num_epochs and not loop.ended:
            state, loop = train_epoch(run, state, loop, report_progress)
            if loop.batch == run.steps_per_epoch:
                state, loop = end_epoch(run, state, loop)
            else:
                save(run, state, loop)  # paused inside the epoch at config.max_steps
            if int(state.step) == config.max_steps:
                run.session.writer.flush()
                logging.info(
                    "Stopped at config.max_steps=%d; re-run to continue.", config.max_steps
                )
                return {"stopped_at_step": config.max_steps}
        if interrupts.termination_requested():  # during the last evaluation, which saved
            stop_terminated(run, state, loop)
    return final_results(run, state, loop)
