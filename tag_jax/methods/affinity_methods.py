"""'tag' and 'cs': MTL training that records an inter-task affinity matrix along the way.

Outputs: `affinity.json` ({method, tasks, orientation 'matrix[source][target]',
matrix (T, T), per_epoch, steps_recorded}, plus `sources` / `source_matrix` when
config.affinity.order adds multi-task sources), `affinity.png`,
`affinity_over_time.png`; then `groups.json` and `groups.png` (tag_jax.grouping).
"""

import os

import jax.numpy as jnp
import numpy as np

from tag_jax import affinity, grouping, models, optim, plots, reporting, steps
from tag_jax.errors import UserError
from tag_jax.methods import Method


def validate(config) -> None:
  aff = config.affinity
  if aff.order not in affinity.ORDERS:
    raise UserError(f"unknown config.affinity.order {aff.order!r}; choose one of {affinity.ORDERS}")
  if aff.strategy not in affinity.STRATEGIES:
    raise UserError(f"unknown config.affinity.strategy {aff.strategy!r}; "
                    f"choose one of {affinity.STRATEGIES}")
  if aff.lookahead not in ("sgd", "momentum"):
    raise UserError(f"unknown config.affinity.lookahead {aff.lookahead!r}; choose 'sgd' or 'momentum'")
  if aff.lookahead == "momentum" and not (config.optimizer.name == "sgd"
                                          and config.optimizer.momentum):
    raise UserError("config.affinity.lookahead='momentum' needs config.optimizer.name='sgd' with "
                    "config.optimizer.momentum > 0; use lookahead='sgd' otherwise")
  if aff.every_n_steps < 1:
    raise UserError(f"config.affinity.every_n_steps must be >= 1, got {aff.every_n_steps}")


def build(config, task_names, image_shape, steps_per_epoch) -> Method:
  num_tasks = len(task_names)
  model = models.create_model(config, num_tasks)
  optimizer = optim.create_optimizer(config.optimizer, steps_per_epoch)
  if config.method == "tag":
    learning_rate_fn = optim.learning_rate_schedule(config.optimizer, steps_per_epoch)
    measure = steps.make_tag_measure(model, learning_rate_fn, config.affinity)
    num_sources = len(affinity.sources_for_order(num_tasks, config.affinity.order))
  else:
    measure = steps.make_cs_measure(config.affinity)
    num_sources = num_tasks
  tracker = steps.init_affinity_tracker(num_sources, num_tasks)
  return Method(
      init_state=lambda rng: steps.init_train_state(model, optimizer, rng, image_shape, tracker),
      train_step=steps.make_mtl_step(model, optimizer),
      eval_step=steps.make_eval_step(model),
      measured_step=steps.make_measured_step(model, optimizer, measure,
                                             strategy=config.affinity.strategy,
                                             chunk_size=config.affinity.chunk_size or None),
      measure_every=config.affinity.every_n_steps,
      on_epoch_end=close_affinity_epoch,
      finish=lambda workdir, state, meta: finish(workdir, config, task_names, state, meta))


def finish(workdir, config, task_names, state, meta) -> dict:
  """affinity.json and plots, then groups.json for each k in config.selection.max_groups."""
  record = write_affinity_outputs(workdir, config, task_names, state.tracker, meta)
  return {"affinity": record,
          "groups": grouping.groups_from_affinity(workdir, record, config.selection)}


def close_affinity_epoch(state, meta):
  """Appends the epoch's mean affinity (or None) to meta['affinity_per_epoch']; zeroes epoch sums."""
  tracker = state.tracker
  count = int(tracker["epoch_count"])
  meta.setdefault("affinity_per_epoch", []).append(
      (np.asarray(tracker["epoch_sum"]) / count).tolist() if count else None)
  return state.replace(tracker={**tracker, "epoch_sum": jnp.zeros_like(tracker["epoch_sum"]),
                                "epoch_count": jnp.zeros_like(tracker["epoch_count"])})


def write_affinity_outputs(workdir, config, task_names, tracker, meta) -> dict:
  """affinity.json (run mean, per-epoch means, orientation stated) and its two plots."""
  count = int(tracker["run_count"])
  if not count:
    raise UserError("no affinity step was recorded; lower config.affinity.every_n_steps")
  full = np.asarray(tracker["run_sum"]) / count
  num_tasks = len(task_names)
  record = {
      "method": config.method,
      "tasks": list(task_names),
      "orientation": "matrix[source][target]",
      "matrix": full[:num_tasks].tolist(),
      "per_epoch": [None if m is None else m[:num_tasks] for m in meta["affinity_per_epoch"]],
      "steps_recorded": count,
  }
  if full.shape[0] > num_tasks:
    record["sources"] = [[task_names[t] for t in members]
                         for members in affinity.sources_for_order(num_tasks, config.affinity.order)]
    record["source_matrix"] = full.tolist()
  reporting.write_json_atomic(os.path.join(workdir, "affinity.json"), record)
  plots.affinity_heatmap(record, os.path.join(workdir, "affinity.png"))
  plots.affinity_over_time(record, os.path.join(workdir, "affinity_over_time.png"))
  return record
