"""Evaluation on a split: every network's per-task loss and accuracy, and what the run reports.

A method's eval_step(params, batch_stats, batch) returns sums over one padded
batch for each of its G networks: loss_sum (G, T), correct (G, T), count ()
(G = 1 for single-network methods). Which network serves task t is the method's
`serving[t]`; network g trains on the tasks with members[g, t] = 1.
"""

import jax
import numpy as np

from tag_jax import sharding


def evaluate_networks(eval_step, params, batch_stats, dataset, split: str, *, batch_size: int,
                      mesh) -> dict:
  """{'task_loss', 'task_accuracy'}: (G, T) numpy means over the split's examples."""
  sums = None
  for batch in dataset.batches(split, batch_size=batch_size, seed=0, epoch=0, shuffle=False,
                               drop_remainder=False, process_index=jax.process_index(),
                               process_count=jax.process_count()):
    out = jax.tree.map(np.asarray,
                       eval_step(params, batch_stats, sharding.global_batch(batch, mesh)))
    sums = out if sums is None else jax.tree.map(np.add, sums, out)
  count = max(float(sums["count"]), 1.0)
  return {"task_loss": sums["loss_sum"] / count, "task_accuracy": sums["correct"] / count}


def serving_summary(networks: dict, serving: np.ndarray) -> dict:
  """Each task on its serving network: task_loss, task_accuracy (T lists), their summed loss and
  Total Error (sum over tasks of error %)."""
  tasks = np.arange(len(serving))
  losses = networks["task_loss"][serving, tasks]
  accuracy = networks["task_accuracy"][serving, tasks]
  return {"task_loss": losses.tolist(), "task_accuracy": accuracy.tolist(),
          "loss": float(losses.sum()), "total_error": float((100.0 * (1.0 - accuracy)).sum())}


def network_losses(networks: dict, members: np.ndarray) -> np.ndarray:
  """(G,) each network's validation objective: the sum of its member tasks' losses."""
  return (members * networks["task_loss"]).sum(1)
