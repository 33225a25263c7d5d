"""The contract between the training loop (tag_jax.train) and a method.

The loop owns the data, the mesh, the evaluation schedule, early stopping and
best-parameter tracking, checkpoints, metrics and results.json. A method owns
its model, optimizer, steps and its own outputs, and sees the loop's resources
only through the `LoopContext` handed to its hooks.

Networks: a method trains G >= 1 networks. members (G, T) marks the tasks each
network trains on; serving (T,) names the network whose prediction counts for
each task. With `stacked`, every params/batch_stats leaf has a leading (G,)
axis (network g = leaf[g]); otherwise G = 1 and the whole tree is the network.
Early stopping is per network on the sum of its members' validation losses.

Seeds: a method may train `seeds` = S copies of its networks side by side, as S
separate runs with seeds config.seed + s would (networks seed-major: network
s * G' + g is copy s of network g, G = S * G'; copy s starts from its seed's
initialisation and trains on its seed's data order). The loop then hands the
train step batches with a leading (S,) axis, one per seed, and reports every
copy on its own (results.json 'seed_results'); `serving` names copy 0's networks.
"""

import dataclasses
from typing import Any, Callable, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class LoopContext:
    """What a method's hooks may use of the loop.

    evaluate(params, batch_stats, split) -> {'task_loss', 'task_accuracy'}: (G, T)
    numpy arrays, the method's eval_step run over a whole split.
    writer: the run's metric writer (tag_jax.metric_writing: write_scalars, write_images;
        TensorBoard and metrics.jsonl, written by process 0).
    train_seconds: the run's training seconds so far, over all invocations.
    """

    config: Any
    workdir: str
    dataset: Any
    mesh: Any
    task_names: tuple
    steps_per_epoch: int
    step: int
    evaluate: Callable
    writer: Any
    train_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class FinalEvaluation:
    """The parameters the run reports (best or final, config.early_stopping.restore_best) and
    every network's evaluation of them: validation/test = {'task_loss', 'task_accuracy'} (G, T);
    best_epoch (G,): each network's epoch with the best validation objective."""

    params: Any
    batch_stats: Any
    validation: dict
    test: dict
    best_epoch: list


@dataclasses.dataclass(frozen=True)
class Method:
    """What the loop runs.

    init_state(rng) -> steps.TrainState.
    train_step(state, batch) -> (state, metrics): 'loss' (), 'task_losses' (T,) and any other
      leaves, all logged (vectors of length T per task).
    eval_step(params, batch_stats, batch) -> {'loss_sum': (G, T), 'correct': (G, T), 'count': ()}.
    members (G, T), serving (T,), stacked: see the module docstring.
    measured_step: like train_step, run instead of it when step % measure_every == 0.
    trunk_passes: (per train_step, per measured_step) trunk forward+backward passes (a
      lookahead forward or an extra per-task backward pull counts one, a forward on part of
      the batch its share); the loop multiplies
      them by the steps it ran and reports the total in results.json.
    served_groups(params) -> the task-name groups whose networks serve the tasks; None = from
      members and serving.
    on_epoch_end(ctx, state, record) -> (state, record): record is the method's own JSON dict,
      saved with every checkpoint.
    stop_reason(record) -> None, or why training should end now (a sentence, results.json's
      'stop_reason'); asked with the method's record after each on_epoch_end.
    finish(ctx, state, record, final: FinalEvaluation) -> dict: writes the method's outputs
      (process 0 only) and returns a JSON summary for results.json.
    state_sharding(mesh): sharding (pytree prefix) of the state; None = replicated.
    seeds: copies of the networks trained as separate seeds (module docstring); 1 = none.
    compiler_options: what every jit of the method's steps passes as jax.jit's compiler_options
    (tag_jax.models.compiler_options of model.conv; set by methods.build).
    autotune: {setting: decision} of the settings whose 'auto' tag_jax.autotune decided (set by
      tag_jax.methods.build; JSON-able, for results.json).
    """

    init_state: Callable
    train_step: Callable
    eval_step: Callable
    members: np.ndarray
    serving: np.ndarray
    stacked: bool = False
    measured_step: Optional[Callable] = None
    measure_every: int = 1
    trunk_passes: tuple = (1, 1)
    served_groups: Optional[Callable] = None
    on_epoch_end: Optional[Callable] = None
    stop_reason: Optional[Callable] = None
    finish: Optional[Callable] = None
    state_sharding: Optional[Callable] = None
    seeds: int = 1
    autotune: dict = dataclasses.field(default_factory=dict)
    compiler_options: Optional[dict] = None


def one_network(num_tasks: int) -> dict:
    """members and serving of a single network that trains on and serves every task."""
    return {"members": np.ones((1, num_tasks), np.float32), "serving": np.zeros(num_tasks, int)}


def seed_serving(method: "Method", seed: int) -> np.ndarray:
    """(T,) the networks serving each task in copy `seed` of a method's networks."""
    return method.serving + seed * (len(method.members) // method.seeds)


def groups_of(members: np.ndarray, serving: np.ndarray, task_names) -> list:
    """The serving networks' member groups (task names), in network order."""
    return [[t for t, m in zip(task_names, members[g]) if m] for g in sorted(set(serving.tolist()))]
