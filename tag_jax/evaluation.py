"""Evaluation on a split: every network's per-task loss and accuracy, and what the run reports.

A method's eval_step(params, batch_stats, batch) returns sums over one padded
batch for each of its G networks: loss_sum (G, T), correct (G, T), count ()
(G = 1 for single-network methods). Which network serves task t is the method's
`serving[t]`; network g trains on the tasks with members[g, t] = 1.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from tag_jax import sharding


def split_batches(dataset, split: str, *, batch_size: int, mesh, prefetch: int):
    """The split's padded batches in order, on the devices: read and copied `prefetch` ahead
    (sharding.device_batches); close the generator to stop it."""
    batches = dataset.batches(
        split,
        batch_size=batch_size,
        seed=0,
        epoch=0,
        shuffle=False,
        drop_remainder=False,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return sharding.device_batches(batches, mesh, ahead=prefetch)


def evaluate_networks(
    eval_step, params, batch_stats, dataset, split: str, *, batch_size: int, mesh, prefetch: int = 2
) -> dict:
    """{'task_loss', 'task_accuracy'}: (G, T) numpy means over the split's examples.

    The sums stay on the device until the split's end (one transfer)."""
    sums = None
    on_device = split_batches(dataset, split, batch_size=batch_size, mesh=mesh, prefetch=prefetch)
    with contextlib.closing(on_device):
        for batch in on_device:
            out = eval_step(params, batch_stats, batch)
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    count = max(float(sums["count"]), 1.0)
    return {"task_loss": sums["loss_sum"] / count, "task_accuracy": sums["correct"] / count}


def per_example_values(
    example_step,
    params,
    batch_stats,
    dataset,
    split: str,
    *,
    batch_size: int,
    mesh,
    prefetch: int = 2,
) -> dict:
    """{name: (E, ...) numpy}: what example_step(params, batch_stats, batch) -> {name: (B, ...)}
    returns for each of the split's E real examples, in the split's order (padding dropped).

    For what needs every example (a bootstrap over validation examples), run once at the end; a
    transfer per batch (on several processes, every process gets every example)."""
    gather = jax.device_get if jax.process_count() == 1 else multihost_utils.process_allgather
    parts = []
    on_device = split_batches(dataset, split, batch_size=batch_size, mesh=mesh, prefetch=prefetch)
    with contextlib.closing(on_device):
        for batch in on_device:
            values, mask = gather((example_step(params, batch_stats, batch), batch["mask"]))
            real = np.asarray(mask) > 0
            parts.append({name: np.asarray(v)[real] for name, v in values.items()})
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def serving_summary(networks: dict, serving: np.ndarray) -> dict:
    """Each task on its serving network: task_loss, task_accuracy (T lists), their summed loss and
    Total Error (sum over tasks of error %)."""
    tasks = np.arange(len(serving))
    losses = networks["task_loss"][serving, tasks]
    accuracy = networks["task_accuracy"][serving, tasks]
    return {
        "task_loss": losses.tolist(),
        "task_accuracy": accuracy.tolist(),
        "loss": float(losses.sum()),
        "total_error": float((100.0 * (1.0 - accuracy)).sum()),
    }


def network_losses(networks: dict, members: np.ndarray) -> np.ndarray:
    """(G,) each network's validation objective: the sum of its member tasks' losses."""
    return (members * networks["task_loss"]).sum(1)


# A run learned when its validation Total Error is at most this fraction of the majority baseline's.
LEARNED_FRACTION = 0.9


def majority_baseline(dataset, num_classes: int) -> dict:
    """Each task's most frequent class in the training labels, answered for every example.

    {'classes': (T,) majority class per task, 'validation'/'test': {'task_accuracy' (T,),
    'total_error'}} (ties go to the lower class).
    """
    train = dataset.labels("train")
    classes = np.array([np.bincount(column, minlength=num_classes).argmax() for column in train.T])
    baseline = {"classes": classes.tolist()}
    for split in ("validation", "test"):
        accuracy = (dataset.labels(split) == classes).mean(0)
        baseline[split] = {
            "task_accuracy": accuracy.tolist(),
            "total_error": float((100.0 * (1.0 - accuracy)).sum()),
        }
    return baseline


def learned(validation_total_error: float, baseline: dict) -> bool:
    """Whether the validation Total Error is clearly (LEARNED_FRACTION) below the baseline's."""
    return validation_total_error <= LEARNED_FRACTION * baseline["validation"]["total_error"]
