"""'uw', 'gradnorm', 'pcgrad': the MTL baselines of the TAG CelebA code
(docs/reference.md#mtl-baselines).

All tasks share one network, as in 'mtl'; the baselines reweight the task
losses or alter the task gradients (formulas in tag_jax/weighting.py):

- 'uw' (uncertainty weighting): a log-sigma per task, params['uw_log_sigma']
  (T,), initialised to 1 and trained by the model's optimizer on
  sum_t L_t / exp(2 c_t) + c_t, c_t = clip(s_t, 0.01, 10).
- 'gradnorm': task weights w (T,) in state.tracker, initialised to 1. Each step,
  GradNorm's loss on the gradient norms at the last trunk convolution kernel
  updates w through its own state of the model's optimizer (the reference uses
  the model's optimizer object, whose slots are per variable); the model trains
  on sum_i w_i L_i with w from BEFORE this update (the reference records the
  weighted loss before it updates w); then w is clipped to [0.1, 10] and
  rescaled to sum to T. L_i(0) are the losses of the run's first batch.
- 'pcgrad': per-task trunk gradients projected off the ones they conflict with,
  then summed; the heads (and log-sigmas) get their plain gradient. With
  config.baselines.pcgrad_uncertainty (the reference), the task losses are
  uncertainty-weighted first.

Per-task gradients come from one vjp of the (T,) losses and T cotangent pulls
(affinity.per_task_gradients, config.baselines.strategy).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tag_jax import affinity, config_checks, models, optim, stacking, steps, weighting
from tag_jax.methods.base import Method, one_network

LOG_SIGMA = "uw_log_sigma"  # params subtree of the uncertainty weights, beside 'shared', 'heads'


def default_config() -> ml_collections.ConfigDict:
    """config.baselines: the MTL baselines of the TAG CelebA code."""
    cfg = ml_collections.ConfigDict()
    cfg.gradnorm_alpha = 0.1  # GradNorm asymmetry alpha (reference: 0.1)
    cfg.pcgrad_uncertainty = True  # PCGrad on uncertainty-weighted losses (reference)
    cfg.strategy = "auto"  # per-task gradient pulls, as config.affinity.strategy
    return cfg


BLOCK = config_checks.Block(
    "baselines",
    default_config,
    {
        "gradnorm_alpha": config_checks.number(0),
        "pcgrad_uncertainty": config_checks.BOOL,
        "strategy": config_checks.Choice(stacking.STRATEGIES),
    },
)


def build_uw(config, task_names, image_shape, steps_per_epoch) -> Method:
    model, optimizer = _model_and_optimizer(config, task_names, steps_per_epoch)
    return _baseline(
        model,
        optimizer,
        image_shape,
        task_names,
        make_uw_step(model, optimizer),
        log_sigma=True,
        per_step_passes=1,
    )


def build_gradnorm(config, task_names, image_shape, steps_per_epoch) -> Method:
    model, optimizer = _model_and_optimizer(config, task_names, steps_per_epoch)
    step = make_gradnorm_step(
        model, optimizer, alpha=config.baselines.gradnorm_alpha, strategy=config.baselines.strategy
    )
    return _baseline(
        model,
        optimizer,
        image_shape,
        task_names,
        step,
        gradnorm=True,
        per_step_passes=1 + len(task_names),
    )


def build_pcgrad(config, task_names, image_shape, steps_per_epoch) -> Method:
    model, optimizer = _model_and_optimizer(config, task_names, steps_per_epoch)
    uncertainty = config.baselines.pcgrad_uncertainty
    step = make_pcgrad_step(
        model, optimizer, uncertainty=uncertainty, strategy=config.baselines.strategy
    )
    return _baseline(
        model,
        optimizer,
        image_shape,
        task_names,
        step,
        log_sigma=uncertainty,
        per_step_passes=1 + len(task_names),
    )


def _model_and_optimizer(config, task_names, steps_per_epoch):
    return (
        models.create_model(config, len(task_names)),
        optim.create_optimizer(config, steps_per_epoch),
    )


def _baseline(
    model,
    optimizer,
    image_shape,
    task_names,
    train_step,
    *,
    per_step_passes: int,
    log_sigma=False,
    gradnorm=False,
) -> Method:
    """One network trained by `train_step`; its state has log-sigmas and/or GradNorm weights."""
    num_tasks = len(task_names)

    def init_state(rng):
        tracker = init_gradnorm_tracker(optimizer, num_tasks) if gradnorm else None
        state = steps.init_train_state(model, optimizer, rng, image_shape, tracker)
        if log_sigma:
            state = with_extra_params(state, optimizer, {LOG_SIGMA: jnp.ones(num_tasks)})
        return state

    return Method(
        init_state=init_state,
        train_step=train_step,
        eval_step=steps.make_eval_step(model),
        trunk_passes=(per_step_passes,) * 2,
        **one_network(num_tasks),
    )


def with_extra_params(state: steps.TrainState, optimizer, extra: dict) -> steps.TrainState:
    """state whose params (and best_params) also hold the subtrees `extra`; new optimizer state."""
    params = {**state.params, **extra}
    return state.replace(
        params=params, opt_state=optimizer.init(params), best_params=steps.copy_tree(params)
    )


def init_gradnorm_tracker(optimizer, num_tasks: int) -> dict:
    """weights (T,) = 1, their optimizer state, initial_losses (T,) (overwritten on step 0)."""
    weights = jnp.ones(num_tasks)
    return {
        "weights": weights,
        "weight_opt_state": optimizer.init(weights),
        "initial_losses": jnp.ones(num_tasks),
    }


def task_objectives(model, params, batch_stats, batch, *, uncertainty: bool):
    """(terms (T,), (losses (T,), new batch_stats));
    terms = losses, uncertainty-weighted if asked."""
    losses, new_batch_stats = steps.task_losses(model, params, batch_stats, batch)
    terms = (
        weighting.uncertainty_weighted_losses(losses, params[LOG_SIGMA]) if uncertainty else losses
    )
    return terms, (losses, new_batch_stats)


def last_conv_kernel(shared):
    """GradNorm's W: the kernel of the trunk's last convolution (Conv3x3_<n> with the largest n).

    Works on the trunk's params or on per-task gradients of them (leaves (T, ...)).
    """
    convs = [name for name in shared if name.startswith("Conv3x3_")]
    return shared[max(convs, key=lambda name: int(name.rsplit("_", 1)[1]))]["kernel"]


def make_uw_step(model, optimizer):
    """Step on sum_t L_t / exp(2 c_t) + c_t. metrics:
    loss (), task_losses (T,), uw_log_sigma (T,)."""

    def train_step(state: steps.TrainState, batch):
        def objective(params):
            terms, aux = task_objectives(model, params, state.batch_stats, batch, uncertainty=True)
            return terms.sum(), aux

        (loss, (losses, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        state = steps.apply_gradients(state, optimizer, grads, batch_stats)
        return state, {"loss": loss, "task_losses": losses, LOG_SIGMA: state.params[LOG_SIGMA]}

    return train_step


def make_gradnorm_step(model, optimizer, *, alpha: float, strategy: str):
    """GradNorm step; state.tracker as init_gradnorm_tracker.

    metrics: loss () = sum_i w_i L_i (w before the update), task_losses (T,),
    gradnorm_loss (), task_weights (T,) after the update, clip and rescale.
    """

    def train_step(state: steps.TrainState, batch):
        losses, vjp_fn, batch_stats = jax.vjp(
            lambda p: steps.task_losses(model, p, state.batch_stats, batch),
            state.params,
            has_aux=True,
        )
        # Only the W leaf of the T pulls is used: XLA drops the rest of those backward passes.
        kernel_grads = last_conv_kernel(
            affinity.per_task_gradients(vjp_fn, losses.shape[0], strategy=strategy)["shared"]
        )
        grad_norms = jnp.sqrt(jnp.sum(kernel_grads.reshape(losses.shape[0], -1) ** 2, axis=1))
        tracker = state.tracker
        weights = tracker["weights"]
        initial_losses = jnp.where(state.step == 0, losses, tracker["initial_losses"])
        balance_loss, weight_grads = jax.value_and_grad(weighting.gradnorm_loss)(
            weights, grad_norms, losses, initial_losses, alpha
        )
        updates, weight_opt_state = optimizer.update(
            weight_grads, tracker["weight_opt_state"], weights
        )
        new_weights = weighting.renormalize_task_weights(optax.apply_updates(weights, updates))
        (grads,) = vjp_fn(weights)  # gradient of sum_i w_i L_i
        state = state.replace(
            tracker={
                "weights": new_weights,
                "weight_opt_state": weight_opt_state,
                "initial_losses": initial_losses,
            }
        )
        state = steps.apply_gradients(state, optimizer, grads, batch_stats)
        return state, {
            "loss": jnp.sum(weights * losses),
            "task_losses": losses,
            "gradnorm_loss": balance_loss,
            "task_weights": new_weights,
        }

    return train_step


def make_pcgrad_step(model, optimizer, *, uncertainty: bool, strategy: str):
    """PCGrad step on the trunk; heads (and log-sigmas) get the plain summed gradient.

    metrics: loss () = sum of the (uncertainty-weighted if asked) task terms,
    task_losses (T,), and uw_log_sigma (T,) with uncertainty.
    """

    def train_step(state: steps.TrainState, batch):
        terms, vjp_fn, (losses, batch_stats) = jax.vjp(
            lambda p: task_objectives(model, p, state.batch_stats, batch, uncertainty=uncertainty),
            state.params,
            has_aux=True,
        )
        task_grads = affinity.per_task_gradients(vjp_fn, terms.shape[0], strategy=strategy)
        grads = {
            **jax.tree.map(lambda g: g.sum(0), task_grads),
            "shared": weighting.pcgrad_gradient(task_grads["shared"]),
        }
        state = steps.apply_gradients(state, optimizer, grads, batch_stats)
        metrics = {"loss": terms.sum(), "task_losses": losses}
        if uncertainty:
            metrics[LOG_SIGMA] = state.params[LOG_SIGMA]
        return state, metrics

    return train_step
