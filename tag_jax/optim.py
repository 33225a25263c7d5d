"""Optimizer and learning-rate schedule from `config.optimizer` (optax)."""

import optax

from tag_jax.errors import UserError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "constant", "cosine")


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate at each step of a run of config.num_epochs epochs, from config.optimizer:
    a linear warm-up from lr / warmup_steps to lr over warmup_steps (never 0: the lookahead
    affinity divides by it), then 'constant'; 'step': lr * decay_factor **
    floor(epoch / decay_every_epochs) (the references' halving, epochs counted from step 0);
    'cosine': from lr down to 0 at the run's last step."""
    opt_config, num_train_steps = config.optimizer, config.num_epochs * steps_per_epoch
    lr, warmup = opt_config.learning_rate, opt_config.warmup_steps
    if opt_config.schedule == "constant":
        after = optax.constant_schedule(lr)
    elif opt_config.schedule == "step":
        after = optax.exponential_decay(
            lr,
            transition_steps=opt_config.decay_every_epochs * steps_per_epoch,
            decay_rate=opt_config.decay_factor,
            staircase=True,
        )
    elif opt_config.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, max(num_train_steps - warmup, 1))
    else:
        raise UserError(
            f"unknown config.optimizer.schedule {opt_config.schedule!r}; choose one of {SCHEDULES}"
        )
    if not warmup:
        return after
    if opt_config.schedule == "step":  # the halving keeps counting epochs from step 0
        return lambda step: after(step) * optax.linear_schedule(1.0 / warmup, 1.0, warmup)(step)
    return optax.join_schedules([optax.linear_schedule(lr / warmup, lr, warmup), after], [warmup])


def create_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD (+ momentum, trace form: t <- g + m t, update -lr t) or Adam from config.optimizer, with
    coupled L2 weight decay; the learning rate follows `learning_rate_schedule`."""
    opt_config = config.optimizer
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if opt_config.name == "sgd":
        base = optax.sgd(schedule, momentum=opt_config.momentum or None)
    elif opt_config.name == "adam":
        base = optax.adam(schedule)
    else:
        raise UserError(
            f"unknown config.optimizer.name {opt_config.name!r}; choose one of {OPTIMIZERS}"
        )
    if opt_config.weight_decay:
        return optax.chain(optax.add_decayed_weights(opt_config.weight_decay), base)
    return base
