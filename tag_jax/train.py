"""train_and_evaluate(config, workdir): the training loop shared by every method.

Host loop: epochs of padded batches from the dataset, a jitted pure step per
batch, evaluation on the validation split each epoch, early stopping on the
summed validation loss, orbax checkpoints (resumable mid-epoch), clu metrics and
metrics.jsonl; at the end the best parameters are evaluated on the test split and
written to `results.json`.
"""

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import periodic_actions

from tag_jax import checkpointing, data, methods, models, optim, reporting, sharding, steps
from tag_jax.data import pipeline
from tag_jax.errors import TrainingDiverged, UserError

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


def prepare_workdir(workdir: str, config) -> None:
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


def evaluate(eval_step, params, batch_stats, dataset, split: str, config, mesh) -> dict:
  """Per-task loss and accuracy on a split, summed validation loss and Total Error (sum of error %)."""
  sums = None
  for batch in dataset.batches(split, batch_size=config.eval_batch_size, seed=0, epoch=0,
                               shuffle=False, drop_remainder=False,
                               process_index=jax.process_index(),
                               process_count=jax.process_count()):
    out = jax.tree.map(np.asarray,
                       eval_step(params, batch_stats, sharding.global_batch(batch, mesh)))
    sums = out if sums is None else jax.tree.map(np.add, sums, out)
  count = max(float(sums["count"]), 1.0)
  losses, accuracy = sums["loss_sum"] / count, sums["correct"] / count
  return {"task_loss": losses.tolist(), "task_accuracy": accuracy.tolist(),
          "loss": float(losses.sum()), "total_error": float((100.0 * (1.0 - accuracy)).sum())}


def _named(prefix: str, values, task_names) -> dict:
  return {f"{prefix}/{name}": float(v) for name, v in zip(task_names, values)}


def check_finite(task_loss: np.ndarray, task_names, step: int, workdir: str) -> None:
  """TrainingDiverged naming the tasks whose loss is NaN or infinite."""
  bad = [name for name, v in zip(task_names, task_loss) if not np.isfinite(v)]
  if bad:
    raise TrainingDiverged(
        f"loss of task(s) {bad} became non-finite at step {step}; the last good checkpoint in "
        f"{os.path.join(workdir, 'checkpoints')} is kept: lower config.optimizer.learning_rate "
        "or check the input data, then re-run to resume")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config.method` on `config.dataset`, writes everything under `workdir`; returns results."""
  validate_config(config)
  prepare_workdir(workdir, config)
  dataset = data.load_dataset(config)
  task_names = dataset.task_names
  steps_per_epoch = pipeline.num_batches(dataset.num_examples("train"), config.batch_size,
                                         config.drop_remainder)
  if steps_per_epoch < 1:
    raise UserError(f"config.batch_size {config.batch_size} is larger than the training split "
                    f"({dataset.num_examples('train')} examples) with drop_remainder")
  mesh = sharding.create_mesh(config.mesh)
  sharding.check_divisible(config.batch_size, mesh, "batch_size")
  sharding.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
  method = methods.build(config, task_names, dataset.image_shape, steps_per_epoch)
  state_sharding = method.state_sharding(mesh) if method.state_sharding else sharding.replicated(mesh)
  state = jax.jit(method.init_state, out_shardings=state_sharding)(jax.random.key(config.seed))

  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  restored = checkpointing.restore_latest(manager, state)
  meta = {"epoch": 0, "batch": 0, "best_loss": float("inf"), "best_epoch": -1,
          "epochs_without_improvement": 0, "history": [], "stopped_early": False}
  if restored is not None:
    state, meta = restored
    logging.info("Resumed from step %d (epoch %d, batch %d).", int(state.step), meta["epoch"],
                 meta["batch"])
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if jax.process_index() == 0:
    reporting.truncate_jsonl(metrics_path, int(state.step))

  plain_step = sharding.jit_train_step(method.train_step, state_sharding, mesh)
  measured_step = method.measured_step and sharding.jit_train_step(method.measured_step,
                                                                   state_sharding, mesh)
  eval_step = jax.jit(method.eval_step, out_shardings=sharding.replicated(mesh))
  writer = reporting.create_writer(workdir)
  total_steps = config.num_epochs * steps_per_epoch
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=writer, every_steps=config.log_every_steps)
  step = int(state.step)
  start_time = time.time()

  while meta["epoch"] < config.num_epochs and not meta["stopped_early"]:
    epoch = meta["epoch"]
    for batch in dataset.batches("train", batch_size=config.batch_size, seed=config.seed,
                                 epoch=epoch, shuffle=True, drop_remainder=config.drop_remainder,
                                 start_batch=meta["batch"], process_index=jax.process_index(),
                                 process_count=jax.process_count()):
      measure_now = measured_step and step % method.measure_every == 0
      state, metrics = (measured_step if measure_now else plain_step)(
          state, sharding.global_batch(batch, mesh))
      task_loss = np.asarray(metrics["task_losses"])
      check_finite(task_loss, task_names, step + 1, workdir)
      step += 1
      meta["batch"] += 1
      report_progress(step)
      if step % config.log_every_steps == 0:
        writer.write_scalars(step, {"train/loss": float(metrics["loss"]),
                                    **_named("train/loss", task_loss, task_names)})
      last_of_epoch = meta["batch"] == steps_per_epoch
      if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
          and not last_of_epoch):
        checkpointing.save(manager, step, state, meta)
      if step == config.max_steps:
        if not last_of_epoch:
          checkpointing.save(manager, step, state, meta)
          writer.flush()
          logging.info("Stopped at config.max_steps=%d; re-run to continue.", step)
          return {"stopped_at_step": step}
        break
    val = evaluate(eval_step, state.params, state.batch_stats, dataset, "validation", config, mesh)
    writer.write_scalars(step, {"val/loss": val["loss"], "val/total_error": val["total_error"],
                                "epoch": epoch + 1,
                                **_named("val/accuracy", val["task_accuracy"], task_names)})
    logging.info("epoch %d: validation loss %.4f, total error %.2f", epoch + 1, val["loss"],
                 val["total_error"])
    if val["loss"] < meta["best_loss"]:
      meta.update(best_loss=val["loss"], best_epoch=epoch + 1, epochs_without_improvement=0)
      state = state.replace(best_params=steps.copy_tree(state.params),
                            best_batch_stats=steps.copy_tree(state.batch_stats))
    else:
      meta["epochs_without_improvement"] += 1
    patience = config.early_stopping.patience
    meta["stopped_early"] = bool(patience) and meta["epochs_without_improvement"] >= patience
    meta["history"].append({"epoch": epoch + 1, "step": step, "val_loss": val["loss"],
                            "val_total_error": val["total_error"]})
    if method.on_epoch_end:
      state = method.on_epoch_end(state, meta)
    meta.update(epoch=epoch + 1, batch=0)
    checkpointing.save(manager, step, state, meta)
    if step == config.max_steps:
      writer.flush()
      logging.info("Stopped at config.max_steps=%d; re-run to continue.", step)
      return {"stopped_at_step": step}

  use_best = config.early_stopping.restore_best and meta["best_epoch"] > 0
  params, batch_stats = ((state.best_params, state.best_batch_stats) if use_best
                         else (state.params, state.batch_stats))
  results = {
      "method": config.method,
      "tasks": list(task_names),
      "epochs": meta["epoch"],
      "steps": step,
      "best_epoch": meta["best_epoch"],
      "stopped_early": meta["stopped_early"],
      "validation": evaluate(eval_step, params, batch_stats, dataset, "validation", config, mesh),
      "test": evaluate(eval_step, params, batch_stats, dataset, "test", config, mesh),
      "train_seconds_this_run": time.time() - start_time,
  }
  writer.write_scalars(step, {"test/total_error": results["test"]["total_error"],
                              **_named("test/accuracy", results["test"]["task_accuracy"],
                                       task_names)})
  writer.flush()
  if jax.process_index() == 0:
    if method.finish:
      method.finish(workdir, state, meta)
    reporting.write_json_atomic(os.path.join(workdir, "results.json"), results)
  logging.info("test total error %.2f; results in %s", results["test"]["total_error"],
               os.path.join(workdir, "results.json"))
  return results
