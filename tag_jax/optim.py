"""Optimizer and learning-rate schedule from `config.optimizer` (optax)."""

import optax

from tag_jax.errors import UserError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "constant")


def learning_rate_schedule(opt_config, steps_per_epoch: int) -> optax.Schedule:
  """'step': lr * decay_factor ** floor(epoch / decay_every_epochs) (the references' halving)."""
  if opt_config.schedule == "constant":
    return optax.constant_schedule(opt_config.learning_rate)
  if opt_config.schedule == "step":
    return optax.exponential_decay(
        opt_config.learning_rate, transition_steps=opt_config.decay_every_epochs * steps_per_epoch,
        decay_rate=opt_config.decay_factor, staircase=True)
  raise UserError(f"unknown config.optimizer.schedule {opt_config.schedule!r}; choose one of {SCHEDULES}")


def create_optimizer(opt_config, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (+ momentum, trace form: t <- g + m t, update -lr t) or Adam, with coupled L2 weight decay."""
  schedule = learning_rate_schedule(opt_config, steps_per_epoch)
  if opt_config.name == "sgd":
    base = optax.sgd(schedule, momentum=opt_config.momentum or None)
  elif opt_config.name == "adam":
    base = optax.adam(schedule)
  else:
    raise UserError(f"unknown config.optimizer.name {opt_config.name!r}; choose one of {OPTIMIZERS}")
  if opt_config.weight_decay:
    return optax.chain(optax.add_decayed_weights(opt_config.weight_decay), base)
  return base
