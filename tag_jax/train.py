"""train_and_evaluate(config, workdir): the training loop shared by every method.

Host loop: epochs of padded batches from the dataset, a jitted pure step per
batch, evaluation of every network on the validation split each epoch, early
stopping per network (tag_jax.early_stopping), orbax checkpoints (resumable
mid-epoch), clu metrics and metrics.jsonl; at the end the reported parameters
(best or final) are evaluated on validation and test, the method writes its
outputs, and `results.json` is written. The method contract: tag_jax.methods.base.
"""

import contextlib
import dataclasses
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from tag_jax import (
    checkpointing,
    config_checks,
    data,
    early_stopping,
    evaluation,
    interrupts,
    methods,
    metric_writing,
    models,
    optim,
    reporting,
    sharding,
)
from tag_jax import (
    workdir as workdirs,
)
from tag_jax.data import pipeline
from tag_jax.errors import TrainingDiverged, UserError
from tag_jax.methods.base import FinalEvaluation, LoopContext, Method, groups_of, seed_serving

# Metric leaves logged under another name: train/loss/<task> for the per-task losses.
_METRIC_NAMES = {"task_losses": "loss"}


# Divergence beyond NaN, checked where the loop has the numbers on the host: the summed training
# loss at a log step above LOSS_BLOWUP x its value at step 1; or, at an epoch end after
# max(CHANCE_MIN_STEPS, 3 / (1 - bn_momentum)) steps (batch-norm averages settled), every task's
# validation loss at least CHANCE_FRACTION x log(num_classes), no better than a uniform guess.
LOSS_BLOWUP = 4.0
CHANCE_MIN_STEPS = 300
CHANCE_FRACTION = 0.98
RESTART_HINT = "lower config.optimizer.learning_rate (now {lr:g}) and start over with --restart"


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for values no run can use (before any data is read or code compiled)."""
    config_checks.check_values(config)
    if config.dataset.name not in data.DATASETS:
        raise UserError(
            f"unknown config.dataset.name {config.dataset.name!r}; choose one of {data.DATASETS}"
        )
    if config.optimizer.name not in optim.OPTIMIZERS:
        raise UserError(
            f"unknown config.optimizer.name {config.optimizer.name!r}; "
            f"choose one of {optim.OPTIMIZERS}"
        )
    if config.optimizer.schedule not in optim.SCHEDULES:
        raise UserError(
            f"unknown config.optimizer.schedule {config.optimizer.schedule!r}; "
            f"choose one of {optim.SCHEDULES}"
        )
    if config.dtype not in ("float32", "bfloat16"):
        raise UserError(f"unknown config.dtype {config.dtype!r}; choose 'float32' or 'bfloat16'")
    if config.model.conv not in models.CONV_IMPLS:
        raise UserError(
            f"unknown config.model.conv {config.model.conv!r}; choose one of {models.CONV_IMPLS}"
        )
    methods.validate(config)
    if config.batch_size % jax.process_count():
        raise UserError(
            f"config.batch_size {config.batch_size} must be divisible by the "
            f"{jax.process_count()} processes"
        )


def validate_run_length(config, method: Method, steps_per_epoch: int) -> None:
    """UserError when a method that measures every n steps would measure at step 0 only."""
    total = config.num_epochs * steps_per_epoch
    if method.measured_step and method.measure_every >= total > 1:
        raise UserError(
            f"config.affinity.every_n_steps={method.measure_every} is not below the run's "
            f"{total} steps: only step 0 would be measured; lower it (or train longer)"
        )


# Config keys that make a run what it is: a workdir holding checkpoints of a run with other values
# for them is not resumed (changing e.g. num_epochs or max_steps on a resume is fine).
IDENTITY_KEYS = ("method", "tasks", "seed", "dataset", "image_size", "model", "dtype", "batch_size")


def check_same_run(workdir: str, config) -> None:
    """UserError when `workdir` holds a run (checkpoints, metrics or results) whose identity keys
    differ from config's."""
    saved_path = os.path.join(workdir, "config.json")
    checkpoints = os.path.join(workdir, "checkpoints")
    holds_a_run = (
        (os.path.isdir(checkpoints) and os.listdir(checkpoints))
        or os.path.exists(os.path.join(workdir, "results.json"))
        or os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    )
    if not (os.path.exists(saved_path) and holds_a_run):
        return
    try:
        with open(saved_path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(
            f"{saved_path} is unreadable ({e}); re-run with --restart to start over, "
            "or use a new --workdir"
        ) from e
    current = json.loads(json.dumps(config.to_dict(), default=list))
    differ = [k for k in IDENTITY_KEYS if saved.get(k) != current.get(k)]
    if differ:
        shown = ", ".join(f"{k}={saved.get(k)!r}" for k in differ)
        raise UserError(
            f"--workdir {workdir} holds another run ({shown}); use a new --workdir, or "
            "re-run with --restart to delete it and start over"
        )


def check_workdir(workdir: str) -> None:
    """UserError for a workdir no run can use: a file, or a path too long for checkpoint files."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} is a file; pick a folder")
    config_checks.check_workdir_path(workdir)


def prepare_workdir(workdir: str, config, *, restart: bool = False):
    """Locks the workdir (process 0) and checks it holds this run (or, with restart, deletes what
    it holds); returns the lock (None on other processes)."""
    if not restart:
        check_same_run(workdir, config)  # before the lock, too: a refused run leaves no trace
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = workdirs.acquire(workdir)
            if restart:
                deleted = workdirs.clear_outputs(workdir)
                if deleted:
                    logging.info("--restart: deleted %s in %s.", ", ".join(deleted), workdir)
            else:
                check_same_run(workdir, config)
        except OSError as e:
            error = UserError(
                f"cannot write to --workdir {workdir!r} ({e.strerror}); pick a writable folder"
            )
        except UserError as e:
            error = e
        if error and lock:
            lock.release()
    if jax.process_count() > 1:  # every process stops if process 0 could not take the workdir
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

        ready = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not ready and error is None:
            error = UserError(
                f"process 0 could not prepare --workdir {workdir} (its error says why)"
            )
    if error:
        raise error
    return lock


def check_finite(
    task_loss: np.ndarray, task_names, step: int, workdir: str, last_saved=None
) -> None:
    """TrainingDiverged naming the tasks whose loss is NaN or infinite; last_saved: the step of
    the latest checkpoint, None when there is none. Step s's loss is that of the parameters after
    step s - 1, so at last_saved + 1 the checkpoint itself is what diverged."""
    bad = [name for name, v in zip(task_names, task_loss) if not np.isfinite(v)]
    if bad:
        folder = os.path.join(workdir, "checkpoints")
        if last_saved is None:
            kept = (
                "no checkpoint was saved yet: lower config.optimizer.learning_rate or check the "
                "input data, then re-run"
            )
        elif step == last_saved + 1:
            kept = (
                f"that is the loss of the last checkpoint's parameters: lower "
                f"config.optimizer.learning_rate, delete {os.path.join(folder, str(last_saved))} "
                "and re-run (it resumes from an earlier checkpoint, if any), or start over with "
                "--restart"
            )
        else:
            kept = (
                f"the last checkpoint (step {last_saved}) in {folder} is kept: lower "
                "config.optimizer.learning_rate or check the input data, then re-run to resume"
            )
        raise TrainingDiverged(f"loss of task(s) {bad} became non-finite at step {step}; {kept}")


def check_loss_blowup(loss: float, initial, step: int, config) -> None:
    """TrainingDiverged when the summed training loss is LOSS_BLOWUP times its step-1 value."""
    if initial and initial > 0 and loss > LOSS_BLOWUP * initial:
        raise TrainingDiverged(
            f"training loss {loss:.4g} at step {step} is {loss / initial:.3g}x its value "
            f"{initial:.4g} at step 1: the run diverged; "
            + RESTART_HINT.format(lr=config.optimizer.learning_rate)
        )


def check_above_chance(task_loss, step: int, config) -> None:
    """TrainingDiverged when, after enough steps, no task's validation loss beats a uniform guess."""
    min_steps = max(CHANCE_MIN_STEPS, math.ceil(3 / (1 - config.model.bn_momentum)))
    chance = math.log(config.model.num_classes)
    task_loss = np.asarray(task_loss, np.float64)
    if not np.isfinite(task_loss).all():
        raise TrainingDiverged(
            f"validation loss became non-finite at step {step}: the run diverged; "
            + RESTART_HINT.format(lr=config.optimizer.learning_rate)
        )
    if step >= min_steps and (task_loss >= CHANCE_FRACTION * chance).all():
        raise TrainingDiverged(
            f"after {step} steps no task does better on validation than a uniform guess (every "
            f"task's loss >= {CHANCE_FRACTION * chance:.3f}, lowest {task_loss.min():.4g}): the run "
            "diverged or learned nothing; check config.optimizer.learning_rate (now "
            f"{config.optimizer.learning_rate:g}) and the labels, then start over with --restart"
        )


def named_scalars(prefix: str, metrics: dict, task_names) -> dict:
    """Every leaf as scalars: () -> prefix/name; (T,) -> prefix/name/<task>; else prefix/name/<i>."""
    scalars = {}
    for key, value in metrics.items():
        name = f"{prefix}/{_METRIC_NAMES.get(key, key)}"
        value = np.asarray(value, np.float64)
        if value.ndim == 0:
            scalars[name] = float(value)
        elif value.shape == (len(task_names),):
            scalars.update({f"{name}/{t}": float(v) for t, v in zip(task_names, value)})
        else:
            scalars.update({f"{name}/{i}": float(v) for i, v in enumerate(value.ravel())})
    return scalars


@dataclasses.dataclass
class Run:
    """What one invocation holds: inputs, the built method, its jitted steps, writers."""

    config: ml_collections.ConfigDict
    workdir: str
    dataset: object
    mesh: object
    method: Method
    steps_per_epoch: int
    state_sharding: object
    train_step: object
    measured_step: object
    eval_step: object
    manager: object
    started: float
    writer: metric_writers.MetricWriter = None  # created once the checkpoint is restored
    lock: object = None
    seconds_before: float = 0.0
    last_saved: object = None  # step of the latest checkpoint, None before the first
    compiled: set = dataclasses.field(default_factory=set)

    @property
    def task_names(self) -> tuple:
        return tuple(self.dataset.task_names)

    def context(self, step: int) -> LoopContext:
        return LoopContext(
            config=self.config,
            workdir=self.workdir,
            dataset=self.dataset,
            mesh=self.mesh,
            task_names=self.task_names,
            steps_per_epoch=self.steps_per_epoch,
            step=step,
            evaluate=self.evaluate,
            writer=self.writer,
        )

    def evaluate(self, params, batch_stats, split: str) -> dict:
        """Every network on a split: {'task_loss', 'task_accuracy'} (G, T)."""
        return evaluation.evaluate_networks(
            self.eval_step,
            params,
            batch_stats,
            self.dataset,
            split,
            batch_size=self.config.eval_batch_size,
            mesh=self.mesh,
            prefetch=self.config.prefetch_batches,
        )

    def seconds(self) -> float:
        """Training seconds of this run over all invocations so far."""
        return self.seconds_before + time.time() - self.started

    def close(self) -> None:
        """Flushes the writers, closes the checkpoint manager and releases the workdir lock."""
        try:
            if self.writer:
                self.writer.flush()
            self.manager.close()
        except Exception as e:  # pylint: disable=broad-except (never hide the error that ended the run)
            logging.warning("Closing the run's writers failed: %s", e)
        finally:
            if self.lock:
                self.lock.release()


def with_training_length(config, steps_per_epoch: int):
    """config, with num_epochs raised (in a copy) until the epochs hold config.min_train_steps."""
    epochs = max(config.num_epochs, math.ceil(config.min_train_steps / steps_per_epoch))
    if epochs == config.num_epochs:
        return config
    logging.info(
        "config.min_train_steps=%d: training %d epochs of %d steps (config.num_epochs=%d).",
        config.min_train_steps,
        epochs,
        steps_per_epoch,
        config.num_epochs,
    )
    config = config.copy_and_resolve_references()
    config.num_epochs = epochs
    return config


def set_up(config, workdir: str, *, restart: bool = False) -> Run:
    """Validates the config, reads and checks the data, builds the method and its jitted steps
    (compiled on first use), then (only then) locks and prepares the workdir."""
    validate_config(config)
    check_workdir(workdir)
    dataset = data.load_dataset(config)
    models.check_image_shape(dataset.image_shape)
    empty = [split for split in pipeline.SPLITS if dataset.num_examples(split) < 1]
    if empty:
        raise UserError(
            f"the {' and '.join(empty)} split(s) of config.dataset.name="
            f"{config.dataset.name!r} hold no examples: training, validation and test "
            f"each need at least one (give the dataset more examples)"
        )
    steps_per_epoch = pipeline.num_batches(
        dataset.num_examples("train"), config.batch_size, config.drop_remainder
    )
    if steps_per_epoch < 1:
        raise UserError(
            f"config.batch_size {config.batch_size} is larger than the training split "
            f"({dataset.num_examples('train')} examples) with drop_remainder"
        )
    config = with_training_length(config, steps_per_epoch)
    mesh = sharding.create_mesh(config.mesh)
    sharding.check_divisible(config.batch_size, mesh, "batch_size")
    sharding.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
    method = methods.build(config, dataset.task_names, dataset.image_shape, steps_per_epoch)
    validate_run_length(config, method, steps_per_epoch)
    state_sharding = (
        method.state_sharding(mesh) if method.state_sharding else sharding.replicated(mesh)
    )
    lock = prepare_workdir(workdir, config, restart=restart)
    try:
        return Run(
            config=config,
            workdir=workdir,
            dataset=dataset,
            mesh=mesh,
            method=method,
            steps_per_epoch=steps_per_epoch,
            state_sharding=state_sharding,
            train_step=sharding.jit_train_step(
                method.train_step,
                state_sharding,
                mesh,
                streams=method.seeds > 1,
                compiler_options=method.compiler_options,
            ),
            measured_step=(
                method.measured_step
                and sharding.jit_train_step(
                    method.measured_step,
                    state_sharding,
                    mesh,
                    streams=method.seeds > 1,
                    compiler_options=method.compiler_options,
                )
            ),
            eval_step=jax.jit(
                method.eval_step,
                out_shardings=sharding.replicated(mesh),
                compiler_options=method.compiler_options,
            ),
            manager=checkpointing.create_manager(workdir, config.keep_checkpoints),
            started=time.time(),
            lock=lock,
        )
    except BaseException:
        if lock:
            lock.release()
        raise


def restore_or_init(run: Run):
    """(state, meta): the latest checkpoint's, or a fresh state and loop record. Only then are
    config.json written (unless the workdir holds results and their config.json: those stay until
    new results replace both) and the metric writers opened (metrics.jsonl cut
    back to the checkpoint), so a checkpoint that fails to restore leaves the workdir as it was."""
    state = jax.jit(
        run.method.init_state,
        out_shardings=run.state_sharding,
        compiler_options=run.method.compiler_options,
    )(jax.random.key(run.config.seed))
    restored = checkpointing.restore_latest(run.manager, state)
    if restored is None and os.path.exists(os.path.join(run.workdir, "results.json")):
        logging.warning(
            "%s holds results but no checkpoint: training again from step 0; its "
            "results will be replaced when this run ends.",
            run.workdir,
        )
    if restored is None:
        meta = {
            "epoch": 0,
            "batch": 0,
            "stopped_early": False,
            "history": [],
            "measured_steps": 0,
            "train_seconds": 0.0,
            "method": {},
            "initial_loss": None,
            "early_stopping": early_stopping.initial_record(len(run.method.members)),
        }
    else:
        state, meta = restored
        run.last_saved = int(state.step)
        logging.info(
            "Resumed from step %d (epoch %d, batch %d).",
            int(state.step),
            meta["epoch"],
            meta["batch"],
        )
    run.seconds_before = meta["train_seconds"]
    if jax.process_index() == 0:
        if not (
            os.path.exists(os.path.join(run.workdir, "results.json"))  # else: with new results
            and os.path.exists(os.path.join(run.workdir, "config.json"))
        ):
            write_config(run)
        reporting.truncate_jsonl(
            os.path.join(run.workdir, "metrics.jsonl"),
            int(state.step),
            keep_records=meta.get("metrics_records"),
        )
    run.writer = metric_writing.create_writer(run.workdir)
    return state, meta


def write_config(run: Run) -> None:
    """The run's config as workdir/config.json (written atomically)."""
    reporting.write_json_atomic(os.path.join(run.workdir, "config.json"), run.config.to_dict())


def save(run: Run, state, meta: dict) -> None:
    """A checkpoint of state and meta, with the training seconds so far and the number of records
    in metrics.jsonl (a resumed run drops those logged after it); the writers are flushed first.
    TrainingDiverged instead when the state holds NaN or infinite values."""
    run.writer.flush()
    records = (
        reporting.count_records(os.path.join(run.workdir, "metrics.jsonl"))
        if jax.process_index() == 0
        else None
    )
    step = int(state.step)
    if not bool(np.asarray(checkpointing.all_finite(state))):
        kept = (
            f"the last checkpoint (step {run.last_saved}) is kept"
            if run.last_saved is not None
            else "no checkpoint was saved yet"
        )
        raise TrainingDiverged(
            f"the parameters became non-finite by step {step} and are not saved; "
            f"{kept}: " + RESTART_HINT.format(lr=run.config.optimizer.learning_rate)
        )
    checkpointing.save(
        run.manager,
        step,
        state,
        {**meta, "train_seconds": run.seconds(), "metrics_records": records},
    )
    run.last_saved = step


def check_pending(run: Run, pending: list, meta: dict, up_to: float = math.inf) -> dict:
    """Fetches the task losses of the steps run since the last check, up to step `up_to` (one
    transfer, not one per step, so the host never waits on the device between them), raises
    TrainingDiverged at the first non-finite one, records the step-1 loss divergence is measured
    against; removes them from `pending` (a list of (step, task losses (T,) on device), in step
    order); returns meta."""
    checked = [entry for entry in pending if entry[0] <= up_to]
    if not checked:
        return meta
    values = jax.device_get([losses for _, losses in checked])
    for (step, _), task_loss in zip(checked, values):
        check_finite(np.asarray(task_loss), run.task_names, step, run.workdir, run.last_saved)
    if checked[0][0] == 1:  # the starting value divergence is measured against
        meta = {**meta, "initial_loss": float(np.sum(values[0]))}
    del pending[: len(checked)]
    return meta


def fetch_later(metrics: dict) -> dict:
    """`metrics` with their copy to the host started (reading them later does not wait for it)."""
    for value in jax.tree.leaves(metrics):
        value.copy_to_host_async()
    return metrics


def write_log(run: Run, step: int, metrics: dict, pending: list, meta: dict) -> dict:
    """Checks the losses up to log step `step` (check_pending), then writes its metrics and checks
    them for a blow-up; returns meta."""
    meta = check_pending(run, pending, meta, up_to=step)
    logged = jax.device_get(metrics)
    run.writer.write_scalars(step, named_scalars("train", logged, run.task_names))
    check_loss_blowup(
        float(np.sum(logged["task_losses"])), meta.get("initial_loss"), step, run.config
    )
    return meta


def training_batches(run: Run, meta: dict):
    """The rest of the epoch's training batches (this process's rows), in the order of
    config.seed; for a method with S seeds, batches (S, B, ...) of the S orders of seeds
    config.seed + s, stacked."""
    config = run.config

    def order(seed):
        return run.dataset.batches(
            "train",
            batch_size=config.batch_size,
            seed=seed,
            epoch=meta["epoch"],
            shuffle=True,
            drop_remainder=config.drop_remainder,
            start_batch=meta["batch"],
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    if run.method.seeds == 1:
        return order(config.seed)
    return (
        jax.tree.map(lambda *leaves: np.stack(leaves), *batches)
        for batches in zip(*(order(config.seed + s) for s in range(run.method.seeds)))
    )


def train_epoch(run: Run, state, meta: dict, report_progress):
    """The rest of the current epoch, or up to config.max_steps; returns (state, meta).

    Batches are read and copied to the devices config.prefetch_batches ahead, in a background
    thread (sharding.device_batches). A log step's metrics are written, and the losses so far
    checked for NaN/inf (`check_pending`), once the next step is queued (so the device is never
    left idle while the host logs), and before every checkpoint and at the epoch's end, so a
    diverged run keeps its last good checkpoint."""
    config, method = run.config, run.method
    step = int(state.step)
    pending, to_log = [], None
    streams = method.seeds > 1
    batches = sharding.device_batches(
        training_batches(run, meta), run.mesh, ahead=config.prefetch_batches, streams=streams
    )
    with contextlib.closing(batches):
        for batch in batches:
            interrupts.raise_if_received()  # a Ctrl-C that a garbage-collection callback swallowed
            measure_now = run.measured_step and step % method.measure_every == 0
            kind = "measured" if measure_now else "training"
            if kind not in run.compiled:
                logging.info(
                    "Compiling the %s %s step (first step only; can take a minute on CPU)...",
                    config.method,
                    kind,
                )
                compile_start = time.time()
            state, metrics = (run.measured_step if measure_now else run.train_step)(state, batch)
            if kind not in run.compiled:
                jax.block_until_ready(metrics)
                logging.info(
                    "Compiled and ran the first %s step in %.1f s.",
                    kind,
                    time.time() - compile_start,
                )
                run.compiled.add(kind)
            step += 1
            pending.append((step, metrics["task_losses"]))
            meta = {
                **meta,
                "batch": meta["batch"] + 1,
                "measured_steps": meta["measured_steps"] + bool(measure_now),
            }
            report_progress(step)
            if to_log:  # the previous step's, fetched now that this step is queued behind it
                meta = write_log(run, *to_log, pending, meta)
                to_log = None
            if step % config.log_every_steps == 0:
                to_log = (step, fetch_later(metrics))
            if step == config.max_steps:
                break
            if (
                config.checkpoint_every_steps
                and step % config.checkpoint_every_steps == 0
                and meta["batch"] < run.steps_per_epoch
            ):
                if to_log:
                    meta, to_log = write_log(run, *to_log, pending, meta), None
                meta = check_pending(run, pending, meta)
                save(run, state, meta)
    if to_log:
        meta = write_log(run, *to_log, pending, meta)
    return state, check_pending(run, pending, meta)


def end_epoch(run: Run, state, meta: dict):
    """Validation of every network, early stopping and best parameters, the method's hook, and
    the epoch's checkpoint; returns (state, meta)."""
    step, epoch = int(state.step), meta["epoch"] + 1
    method = run.method
    networks = run.evaluate(state.params, state.batch_stats, "validation")
    val = evaluation.serving_summary(networks, method.serving)
    record, improved, stopped = early_stopping.update(
        meta["early_stopping"],
        evaluation.network_losses(networks, method.members),
        epoch,
        run.config.early_stopping.patience,
        may_stop=step >= run.config.early_stopping.min_steps,
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
    run.writer.write_scalars(
        step,
        {
            "val/loss": val["loss"],
            "val/total_error": val["total_error"],
            "epoch": epoch,
            **named_scalars("val", {"accuracy": val["task_accuracy"]}, run.task_names),
        },
    )
    logging.info(
        "epoch %d: validation loss %.4f, total error %.2f", epoch, val["loss"], val["total_error"]
    )
    check_above_chance(val["task_loss"], step, run.config)
    if stopped:
        logging.info(
            "Early stopping after epoch %d: no network improved its validation loss for "
            "%d epochs (best epoch %s).",
            epoch,
            run.config.early_stopping.patience,
            max(record["best_epoch"]),
        )
    method_record = meta["method"]
    if method.on_epoch_end:
        state, method_record = method.on_epoch_end(run.context(step), state, method_record)
    meta = {
        **meta,
        "epoch": epoch,
        "batch": 0,
        "early_stopping": record,
        "stopped_early": stopped,
        "method": method_record,
        "history": meta["history"]
        + [
            {
                "epoch": epoch,
                "step": step,
                "val_loss": val["loss"],
                "val_total_error": val["total_error"],
            }
        ],
    }
    save(run, state, meta)
    return state, meta


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


def final_results(run: Run, state, meta: dict) -> dict:
    """Evaluates the reported parameters, lets the method write its outputs, writes results.json."""
    config, method = run.config, run.method  # state is finite: saved (save) or restored so
    best_epoch = meta["early_stopping"]["best_epoch"]
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
    if use_best and restored_epoch != meta["epoch"]:
        logging.info(
            "Reporting the parameters of epoch %d (best validation loss), not those of the "
            "last epoch %d.",
            restored_epoch,
            meta["epoch"],
        )
    results = {
        "method": config.method,
        "tasks": list(run.task_names),
        "groups": groups,
        "epochs": meta["epoch"],
        "steps": step,
        "best_epoch": max(best_epoch),
        "stopped_early": meta["stopped_early"],
        "restored_epoch": restored_epoch,
        **served_results(final, method.serving, baseline),
        "majority_baseline": baseline,
        "compute": {
            "trunk_passes": round(
                plain * (step - meta["measured_steps"]) + measured * meta["measured_steps"]
            ),
            "trunk_passes_per_step": [plain, measured],
            "measured_steps": meta["measured_steps"],
            "train_seconds": run.seconds(),
        },
        "autotune": method.autotune,
    }
    if method.seeds > 1:
        results["seed_results"] = seed_results(run, final, baseline)
    if not results["learned"]:
        logging.warning("%s", reporting.did_not_learn_line(results))
    if len(best_epoch) > 1:
        results["network_best_epoch"] = best_epoch
    run.writer.write_scalars(
        step,
        {
            "test/total_error": results["test"]["total_error"],
            **named_scalars("test", {"accuracy": results["test"]["task_accuracy"]}, run.task_names),
        },
    )
    run.writer.flush()
    if jax.process_index() == 0:
        if method.finish:
            results["outputs"] = method.finish(run.context(step), state, meta["method"], final)
        write_config(run)
        reporting.write_json_atomic(os.path.join(run.workdir, "results.json"), results)
        print("\n".join(reporting.answer_lines(results, run.workdir)), flush=True)
    return results


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, restart: bool = False
) -> dict:
    """Trains `config.method` on `config.dataset`, writes everything under `workdir`; returns the
    results, or {'stopped_at_step': n} when config.max_steps paused the run (re-run to resume).

    The workdir is locked while the run lives; restart=True deletes what it holds (checkpoints,
    metrics, outputs) once every check passed, and starts over."""
    run = set_up(config, workdir, restart=restart)
    try:
        return train_loop(run)
    finally:
        run.close()


def train_loop(run: Run) -> dict:
    """Restores or initialises the state, trains to the end (or config.max_steps), reports."""
    config = run.config
    state, meta = restore_or_init(run)
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=config.num_epochs * run.steps_per_epoch,
        writer=run.writer,
        every_steps=config.log_every_steps,
    )
    while meta["epoch"] < config.num_epochs and not meta["stopped_early"]:
        state, meta = train_epoch(run, state, meta, report_progress)
        if meta["batch"] == run.steps_per_epoch:
            state, meta = end_epoch(run, state, meta)
        else:
            save(run, state, meta)  # paused inside the epoch at config.max_steps
        if int(state.step) == config.max_steps:
            run.writer.flush()
            logging.info("Stopped at config.max_steps=%d; re-run to continue.", config.max_steps)
            return {"stopped_at_step": config.max_steps}
    return final_results(run, state, meta)
