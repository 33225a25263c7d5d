"""train_and_evaluate(config, workdir): the training loop shared by every method.

Host loop: epochs of padded batches from the dataset, a jitted pure step per
batch, evaluation of every network on the validation split each epoch, early
stopping per network (tag_jax.early_stopping), orbax checkpoints (resumable
mid-epoch), clu metrics and metrics.jsonl; at the end the reported parameters
(best or final) are evaluated on validation and test, the method writes its
outputs, and `results.json` is written. The method contract: tag_jax.methods.base.
"""

import dataclasses
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from tag_jax import (checkpointing, data, early_stopping, evaluation, methods, metric_writing,
                     models, optim, reporting, sharding)
from tag_jax.data import pipeline
from tag_jax.errors import TrainingDiverged, UserError
from tag_jax.methods.base import FinalEvaluation, LoopContext, Method, groups_of

# Metric leaves logged under another name: train/loss/<task> for the per-task losses.
_METRIC_NAMES = {"task_losses": "loss"}


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError for values no run can use (before any data is read or code compiled)."""
  if config.dataset.name not in data.DATASETS:
    raise UserError(f"unknown config.dataset.name {config.dataset.name!r}; "
                    f"choose one of {data.DATASETS}")
  if config.optimizer.name not in optim.OPTIMIZERS:
    raise UserError(f"unknown config.optimizer.name {config.optimizer.name!r}; "
                    f"choose one of {optim.OPTIMIZERS}")
  if config.optimizer.schedule not in optim.SCHEDULES:
    raise UserError(f"unknown config.optimizer.schedule {config.optimizer.schedule!r}; "
                    f"choose one of {optim.SCHEDULES}")
  if config.dtype not in ("float32", "bfloat16"):
    raise UserError(f"unknown config.dtype {config.dtype!r}; choose 'float32' or 'bfloat16'")
  if config.model.conv not in models.CONV_IMPLS:
    raise UserError(f"unknown config.model.conv {config.model.conv!r}; choose one of {models.CONV_IMPLS}")
  methods.validate(config)
  for key in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps", "keep_checkpoints"):
    if config[key] < 1:
      raise UserError(f"config.{key} must be >= 1, got {config[key]}")
  if config.batch_size % jax.process_count():
    raise UserError(f"config.batch_size {config.batch_size} must be divisible by the "
                    f"{jax.process_count()} processes")


# Config keys that make a run what it is: a workdir holding checkpoints of a run with other values
# for them is not resumed (changing e.g. num_epochs or max_steps on a resume is fine).
IDENTITY_KEYS = ("method", "tasks", "seed", "dataset", "image_size", "model", "dtype", "batch_size")


def check_same_run(workdir: str, config) -> None:
  """UserError when `workdir` holds checkpoints of a run whose identity keys differ from config's."""
  saved_path = os.path.join(workdir, "config.json")
  checkpoints = os.path.join(workdir, "checkpoints")
  if not (os.path.exists(saved_path) and os.path.isdir(checkpoints) and os.listdir(checkpoints)):
    return
  try:
    with open(saved_path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{saved_path} is unreadable ({e}); delete {workdir} to start over") from e
  current = json.loads(json.dumps(config.to_dict(), default=list))
  differ = [k for k in IDENTITY_KEYS if saved.get(k) != current.get(k)]
  if differ:
    shown = ", ".join(f"{k}={saved.get(k)!r}" for k in differ)
    raise UserError(f"--workdir {workdir} holds another run ({shown}); use a new --workdir, or "
                    f"delete {workdir} to start over")


def prepare_workdir(workdir: str, config) -> None:
  check_same_run(workdir, config)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write to --workdir {workdir!r} ({e.strerror}); "
                    "pick a writable folder") from e
  if jax.process_index() == 0:
    reporting.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())


def check_finite(task_loss: np.ndarray, task_names, step: int, workdir: str) -> None:
  """TrainingDiverged naming the tasks whose loss is NaN or infinite."""
  bad = [name for name, v in zip(task_names, task_loss) if not np.isfinite(v)]
  if bad:
    raise TrainingDiverged(
        f"loss of task(s) {bad} became non-finite at step {step}; the last good checkpoint in "
        f"{os.path.join(workdir, 'checkpoints')} is kept: lower config.optimizer.learning_rate "
        "or check the input data, then re-run to resume")


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
  writer: metric_writers.MetricWriter
  started: float
  seconds_before: float = 0.0
  compiled: set = dataclasses.field(default_factory=set)

  @property
  def task_names(self) -> tuple:
    return tuple(self.dataset.task_names)

  def context(self, step: int) -> LoopContext:
    return LoopContext(config=self.config, workdir=self.workdir, dataset=self.dataset,
                       mesh=self.mesh, task_names=self.task_names,
                       steps_per_epoch=self.steps_per_epoch, step=step, evaluate=self.evaluate,
                       writer=self.writer)

  def evaluate(self, params, batch_stats, split: str) -> dict:
    """Every network on a split: {'task_loss', 'task_accuracy'} (G, T)."""
    return evaluation.evaluate_networks(self.eval_step, params, batch_stats, self.dataset, split,
                                        batch_size=self.config.eval_batch_size, mesh=self.mesh)

  def seconds(self) -> float:
    """Training seconds of this run over all invocations so far."""
    return self.seconds_before + time.time() - self.started


def set_up(config, workdir: str) -> Run:
  """Validates, reads the data, builds the method and its jitted steps (compiled on first use)."""
  validate_config(config)
  prepare_workdir(workdir, config)
  dataset = data.load_dataset(config)
  steps_per_epoch = pipeline.num_batches(dataset.num_examples("train"), config.batch_size,
                                         config.drop_remainder)
  if steps_per_epoch < 1:
    raise UserError(f"config.batch_size {config.batch_size} is larger than the training split "
                    f"({dataset.num_examples('train')} examples) with drop_remainder")
  mesh = sharding.create_mesh(config.mesh)
  sharding.check_divisible(config.batch_size, mesh, "batch_size")
  sharding.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
  method = methods.build(config, dataset.task_names, dataset.image_shape, steps_per_epoch)
  state_sharding = (method.state_sharding(mesh) if method.state_sharding
                    else sharding.replicated(mesh))
  return Run(
      config=config, workdir=workdir, dataset=dataset, mesh=mesh, method=method,
      steps_per_epoch=steps_per_epoch, state_sharding=state_sharding,
      train_step=sharding.jit_train_step(method.train_step, state_sharding, mesh),
      measured_step=(method.measured_step
                     and sharding.jit_train_step(method.measured_step, state_sharding, mesh)),
      eval_step=jax.jit(method.eval_step, out_shardings=sharding.replicated(mesh)),
      manager=checkpointing.create_manager(workdir, config.keep_checkpoints),
      writer=metric_writing.create_writer(workdir), started=time.time())


def restore_or_init(run: Run):
  """(state, meta): the latest checkpoint's, or a fresh state and loop record."""
  state = jax.jit(run.method.init_state, out_shardings=run.state_sharding)(
      jax.random.key(run.config.seed))
  restored = checkpointing.restore_latest(run.manager, state)
  if restored is None:
    meta = {"epoch": 0, "batch": 0, "stopped_early": False, "history": [], "measured_steps": 0,
            "train_seconds": 0.0, "method": {},
            "early_stopping": early_stopping.initial_record(len(run.method.members))}
  else:
    state, meta = restored
    logging.info("Resumed from step %d (epoch %d, batch %d).", int(state.step), meta["epoch"],
                 meta["batch"])
  run.seconds_before = meta["train_seconds"]
  if jax.process_index() == 0:
    reporting.truncate_jsonl(os.path.join(run.workdir, "metrics.jsonl"), int(state.step))
  return state, meta


def save(run: Run, state, meta: dict) -> None:
  checkpointing.save(run.manager, int(state.step), state,
                     {**meta, "train_seconds": run.seconds()})


def train_epoch(run: Run, state, meta: dict, report_progress):
  """The rest of the current epoch, or up to config.max_steps; returns (state, meta)."""
  config, method = run.config, run.method
  step = int(state.step)
  for batch in run.dataset.batches(
      "train", batch_size=config.batch_size, seed=config.seed, epoch=meta["epoch"], shuffle=True,
      drop_remainder=config.drop_remainder, start_batch=meta["batch"],
      process_index=jax.process_index(), process_count=jax.process_count()):
    measure_now = run.measured_step and step % method.measure_every == 0
    kind = "measured" if measure_now else "training"
    if kind not in run.compiled:
      logging.info("Compiling the %s %s step (first step only; can take a minute on CPU)...",
                   config.method, kind)
      compile_start = time.time()
    state, metrics = (run.measured_step if measure_now else run.train_step)(
        state, sharding.global_batch(batch, run.mesh))
    if kind not in run.compiled:
      jax.block_until_ready(metrics)
      logging.info("Compiled and ran the first %s step in %.1f s.", kind,
                   time.time() - compile_start)
      run.compiled.add(kind)
    check_finite(np.asarray(metrics["task_losses"]), run.task_names, step + 1, run.workdir)
    step += 1
    meta = {**meta, "batch": meta["batch"] + 1,
            "measured_steps": meta["measured_steps"] + bool(measure_now)}
    report_progress(step)
    if step % config.log_every_steps == 0:
      run.writer.write_scalars(step, named_scalars("train", jax.device_get(metrics),
                                                   run.task_names))
    if step == config.max_steps:
      break
    if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
        and meta["batch"] < run.steps_per_epoch):
      save(run, state, meta)
  return state, meta


def end_epoch(run: Run, state, meta: dict):
  """Validation of every network, early stopping and best parameters, the method's hook, and
  the epoch's checkpoint; returns (state, meta)."""
  step, epoch = int(state.step), meta["epoch"] + 1
  method = run.method
  networks = run.evaluate(state.params, state.batch_stats, "validation")
  val = evaluation.serving_summary(networks, method.serving)
  record, improved, stopped = early_stopping.update(
      meta["early_stopping"], evaluation.network_losses(networks, method.members), epoch,
      run.config.early_stopping.patience)
  if improved.any():
    state = state.replace(
        best_params=early_stopping.keep_best(improved, state.params, state.best_params,
                                             stacked=method.stacked),
        best_batch_stats=early_stopping.keep_best(improved, state.batch_stats,
                                                  state.best_batch_stats, stacked=method.stacked))
  run.writer.write_scalars(step, {"val/loss": val["loss"], "val/total_error": val["total_error"],
                                  "epoch": epoch,
                                  **named_scalars("val", {"accuracy": val["task_accuracy"]},
                                                  run.task_names)})
  logging.info("epoch %d: validation loss %.4f, total error %.2f", epoch, val["loss"],
               val["total_error"])
  if stopped:
    logging.info("Early stopping after epoch %d: no network improved its validation loss for "
                 "%d epochs (best epoch %s).", epoch, run.config.early_stopping.patience,
                 max(record["best_epoch"]))
  method_record = meta["method"]
  if method.on_epoch_end:
    state, method_record = method.on_epoch_end(run.context(step), state, method_record)
  meta = {**meta, "epoch": epoch, "batch": 0, "early_stopping": record, "stopped_early": stopped,
          "method": method_record,
          "history": meta["history"] + [{"epoch": epoch, "step": step, "val_loss": val["loss"],
                                         "val_total_error": val["total_error"]}]}
  save(run, state, meta)
  return state, meta


def final_results(run: Run, state, meta: dict) -> dict:
  """Evaluates the reported parameters, lets the method write its outputs, writes results.json."""
  config, method = run.config, run.method
  best_epoch = meta["early_stopping"]["best_epoch"]
  use_best = config.early_stopping.restore_best and max(best_epoch) > 0
  params, batch_stats = ((state.best_params, state.best_batch_stats) if use_best
                         else (state.params, state.batch_stats))
  final = FinalEvaluation(params=params, batch_stats=batch_stats,
                          validation=run.evaluate(params, batch_stats, "validation"),
                          test=run.evaluate(params, batch_stats, "test"), best_epoch=best_epoch)
  step = int(state.step)
  plain, measured = method.trunk_passes
  groups = (method.served_groups(params) if method.served_groups
            else groups_of(method.members, method.serving, run.task_names))
  results = {
      "method": config.method,
      "tasks": list(run.task_names),
      "groups": groups,
      "epochs": meta["epoch"],
      "steps": step,
      "best_epoch": max(best_epoch),
      "stopped_early": meta["stopped_early"],
      "validation": evaluation.serving_summary(final.validation, method.serving),
      "test": evaluation.serving_summary(final.test, method.serving),
      "compute": {"trunk_passes": plain * (step - meta["measured_steps"])
                                  + measured * meta["measured_steps"],
                  "trunk_passes_per_step": [plain, measured],
                  "measured_steps": meta["measured_steps"],
                  "train_seconds": run.seconds()},
  }
  if len(best_epoch) > 1:
    results["network_best_epoch"] = best_epoch
  run.writer.write_scalars(step, {"test/total_error": results["test"]["total_error"],
                                  **named_scalars("test", {"accuracy": results["test"]
                                                           ["task_accuracy"]}, run.task_names)})
  run.writer.flush()
  if jax.process_index() == 0:
    if method.finish:
      results["outputs"] = method.finish(run.context(step), state, meta["method"], final)
    reporting.write_json_atomic(os.path.join(run.workdir, "results.json"), results)
    print("\n".join(reporting.answer_lines(results, run.workdir)), flush=True)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config.method` on `config.dataset`, writes everything under `workdir`; returns the
  results, or {'stopped_at_step': n} when config.max_steps paused the run (re-run to resume)."""
  run = set_up(config, workdir)
  state, meta = restore_or_init(run)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_epochs * run.steps_per_epoch, writer=run.writer,
      every_steps=config.log_every_steps)
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
