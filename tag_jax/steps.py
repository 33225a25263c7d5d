"""Train state and pure, jittable steps: (state, batch) -> (state, metrics)."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tag_jax.models import per_task_cross_entropy, softmax_nll


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue bit-for-bit after a restart.

  params / batch_stats: {'shared': trunk, 'heads': stacked heads} (batch_stats: trunk only).
  best_*: the parameters with the best summed validation loss so far (early stopping).
  tracker: method accumulators (e.g. affinity sums), a dict of arrays.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  best_params: Any
  best_batch_stats: Any
  tracker: Any


def init_train_state(model: nn.Module, optimizer: optax.GradientTransformation, rng: jax.Array,
                     image_shape, tracker=None) -> TrainState:
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=optimizer.init(params), best_params=copy_tree(params),
                    best_batch_stats=copy_tree(batch_stats), tracker=tracker or {})


def copy_tree(tree):
  """Fresh buffers, so that a donated state never holds one buffer twice."""
  return jax.tree.map(jnp.copy, tree)


def task_losses(model: nn.Module, params, batch_stats, batch):
  """Training-mode forward: per-task losses (T,) and the updated batch statistics."""
  logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                                train=True, mask=batch["mask"], mutable=["batch_stats"])
  return per_task_cross_entropy(logits, batch["labels"], batch["mask"]), updates["batch_stats"]


def shared_losses_fn(model: nn.Module, params, batch_stats):
  """losses_fn(shared_params, batch) -> (T,) with heads fixed and batch statistics of the batch.

  Running averages are not touched (the lookahead forwards of REFERENCE §1).
  """
  def losses_fn(shared, batch):
    return task_losses(model, {**params, "shared": shared}, batch_stats, batch)[0]
  return losses_fn


def apply_gradients(state: TrainState, optimizer, grads, batch_stats) -> TrainState:
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)


def make_mtl_step(model: nn.Module, optimizer):
  """Plain multi-task step on the sum of task losses. metrics: loss (), task_losses (T,)."""
  def train_step(state: TrainState, batch):
    def total_loss(params):
      losses, batch_stats = task_losses(model, params, state.batch_stats, batch)
      return losses.sum(), (losses, batch_stats)
    grads, (losses, batch_stats) = jax.grad(total_loss, has_aux=True)(state.params)
    state = apply_gradients(state, optimizer, grads, batch_stats)
    return state, {"loss": losses.sum(), "task_losses": losses}
  return train_step


def make_eval_step(model: nn.Module):
  """Sums for one padded batch: loss_sum (T,), correct (T,), count () over real examples."""
  def eval_step(params, batch_stats, batch):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                         train=False)
    mask = batch["mask"]
    nll = softmax_nll(logits, batch["labels"])
    correct = (logits.argmax(-1) == batch["labels"]).astype(jnp.float32)
    return {"loss_sum": (nll * mask[:, None]).sum(0), "correct": (correct * mask[:, None]).sum(0),
            "count": mask.sum()}
  return eval_step
