"""DMTG's train step: Gumbel-softmax sampling of the assignment, the grouped objective, the
lookahead term of Θ's gradient and the logits' optimizer (tag_jax.methods.dmtg describes them)."""

import jax
import jax.numpy as jnp
import optax

from tag_jax import losses, steps
from tag_jax.methods.dmtg_network import GroupedNet, assignment

ALIGNMENT_FLOOR = 1e-4  # lookahead_alignment: mean |a| is scaled to 1 unless below this x mean ℓ


def with_logits_optimizer(optimizer, logits_optimizer: str, learning_rate: float):
    """`optimizer` for every parameter ('shared'), or for all but Θ, which gets plain SGD or Adam
    at `learning_rate`."""
    if logits_optimizer == "shared":
        return optimizer
    own = optax.sgd(learning_rate) if logits_optimizer == "sgd" else optax.adam(learning_rate)
    return optax.multi_transform(
        {"net": optimizer, "logits": own},
        lambda params: {key: "logits" if key == "group_logits" else "net" for key in params},
    )


def temperature_schedule(dmtg_config, search_steps: int) -> optax.Schedule:
    """τ(step): constant `tau`, or `tau_start` -> `tau_end` over the search steps (then held)."""
    cfg = dmtg_config
    if cfg.tau_schedule == "constant":
        return optax.constant_schedule(cfg.tau)
    if cfg.tau_schedule == "linear":
        return optax.linear_schedule(cfg.tau_start, cfg.tau_end, search_steps)
    return optax.exponential_decay(
        cfg.tau_start, search_steps, cfg.tau_end / cfg.tau_start, end_value=cfg.tau_end
    )


def gumbel_softmax(group_logits, noise, tau, *, hard: bool):
    """y = softmax((Θ + g) / τ) over groups, (N, K) -> (N, K).

    hard: straight-through, the one-hot of y's argmax forward and y's gradient backward.
    """
    soft = jax.nn.softmax((group_logits + noise) / tau, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)
    return one_hot + (soft - jax.lax.stop_gradient(soft))


def mean_assignment_entropy(group_logits) -> jax.Array:
    """Mean over tasks of the entropy (nats) of softmax(Θ[n]): (N, K) -> ()."""
    log_p = jax.nn.log_softmax(group_logits, axis=-1)
    return -(jnp.exp(log_p) * log_p).sum(-1).mean()


def branch_imbalance(group_logits) -> jax.Array:
    """log K - entropy of the mean over tasks of softmax(Θ[n]): 0 when the branches are used
    equally, log K when every task picks one branch. (N, K) -> ()."""
    mean = jax.nn.softmax(group_logits, axis=-1).mean(0)
    return jnp.log(mean.shape[-1]) + (mean * jnp.log(jnp.maximum(mean, 1e-12))).sum()


def grouped_objective(pair_losses, weights, group_logits, entropy_weight, balance_weight=0.0):
    """(loss (), task losses (N,)) from pair_losses ℓ (K, N) and weights (N, K).

    Task n's loss is Σ_k weights[n, k] ℓ[k, n]; loss = their sum + entropy_weight · mean entropy
    + balance_weight · branch_imbalance.
    """
    task_losses = (weights * pair_losses.T).sum(-1)
    return (
        task_losses.sum()
        + entropy_weight * mean_assignment_entropy(group_logits)
        + balance_weight * branch_imbalance(group_logits)
    ), task_losses


def pair_losses_fn(net: GroupedNet, batch_stats, batch, *, probe_heads: bool = False, moments=None):
    """branch_losses(params) -> (ℓ (K, N), aux); ℓ[k, n]: masked mean cross-entropy of head (k, n)
    on branch k, in training mode. aux: 'batch_stats' (updated), 'moments' (the forward's
    batch-norm moments, models.BatchNorm; or `moments` when given: another forward's, which this
    one normalises from, statistics unchanged), 'example_losses' (K, B, N) (held fixed) and
    'heads_own' (K, N) or None.

    probe_heads: ℓ's gradient reaches the branches only (the heads held fixed in it), and the
    heads' own losses are the same values with the branches' features held fixed instead, for
    the heads to learn from unweighted; else ℓ reaches both and there are none (the reference).
    """
    per_branch = jax.vmap(losses.softmax_nll, in_axes=(0, None))

    def pair_losses(heads_params, features):
        example_losses = per_branch(net.head_logits(heads_params, features), batch["labels"])
        return losses.masked_task_mean(example_losses, batch["mask"]), example_losses

    def branch_losses(params):
        features, new_stats, new_moments = net.branch_features(
            params, batch_stats, batch["image"], train=True, mask=batch["mask"], moments=moments
        )
        heads = params["heads"]
        pair, example_losses = pair_losses(
            jax.lax.stop_gradient(heads) if probe_heads else heads, features
        )
        heads_own = pair_losses(heads, jax.lax.stop_gradient(features))[0] if probe_heads else None
        return pair, {
            "batch_stats": new_stats,
            "moments": new_moments,
            "heads_own": heads_own,
            "example_losses": jax.lax.stop_gradient(example_losses),
        }

    return branch_losses


def lookahead_alignment(branch_losses, params, trunk_grads, now, step_length: float):
    """a (K, N): ℓ[k, n] now minus after a step of relative length `step_length` along branch k's
    trunk gradient (module docstring), scaled to mean |a| = 1 (or by ALIGNMENT_FLOOR x mean ℓ
    when the changes are smaller than that). branch_losses(params) -> (ℓ, aux) as pair_losses_fn
    returns (the lookahead's examples and batch-norm moments); trunk_grads: params['trunks']'
    gradient; now: ℓ (K, N) at params on the same examples and moments."""

    def step_branch(trunk, grad):  # one branch's slice of the stacked (K, ...) trees
        scale = step_length * optax.global_norm(trunk) / (optax.global_norm(grad) + 1e-12)
        return jax.tree.map(lambda w, g: w - scale * g, trunk, grad)

    stepped = jax.vmap(step_branch)(params["trunks"], trunk_grads)
    after = jax.lax.stop_gradient(branch_losses({**params, "trunks": stepped})[0])
    change = now - after
    # ℓ now and after come from two compiled forwards: a floor keeps their rounding (float32,
    # ~1e-7 of ℓ) from being scaled up to a signal when the step changes nothing.
    floor = ALIGNMENT_FLOOR * jnp.abs(now).mean()
    return change / jnp.maximum(jnp.abs(change).mean(), floor)


def every_nth_example(batch, moments, n: int):
    """(batch, moments) narrowed to examples 0, n, 2n, ...: every array of the batch on its leading
    axis B, the batch-norm moments' example rows (models.BatchNorm, (..., B, C)) on theirs."""

    def narrow(path, leaf):
        return leaf[..., ::n, :] if path[-1].key.startswith("example_") else leaf

    return (
        jax.tree.map(lambda a: a[::n], batch),
        jax.tree_util.tree_map_with_path(narrow, moments),
    )


def make_dmtg_step(
    net: GroupedNet,
    optimizer,
    *,
    seed: int,
    temperature: optax.Schedule,
    hard: bool,
    entropy_weight: float,
    search_steps: int,
    warmup_steps: int = 0,
    balance_weight: float = 0.0,
    num_samples: int = 1,
    probe_heads: bool = False,
    lookahead_weight: float = 0.0,
    lookahead_step: float = 0.003,
    lookahead_subsample: int = 1,
):
    """DMTG's train step (docs/reference.md#dmtg-differentiable-grouping; the options:
    tag_jax.methods.dmtg): the Gumbel-weighted loss before `search_steps`, then the arg-max heads
    with Θ frozen.

    Args:
      net: the K-branch network; its params hold Θ as 'group_logits' (N, K).
      optimizer: for every parameter, Θ included (with_logits_optimizer).
      seed: the Gumbel noise of step i is drawn from fold_in(key(seed), i) (same on resume).
      temperature: τ(step) (temperature_schedule).
      hard: straight-through weights (one-hot forward, soft gradient) instead of soft ones.
      entropy_weight: + weight x mean over tasks of the entropy of softmax(Θ[n]).
      search_steps: steps of the search; later steps fine-tune the arg-max heads and branches.
      warmup_steps: Θ learns from this step on (before, its gradient is zero).
      balance_weight: + weight x (log K - entropy of the mean assignment): keeps branches in use.
      num_samples: Gumbel draws per step, their relaxed weights averaged (one branch forward).
      probe_heads: every head learns from its own loss while searching (pair_losses_fn), the
        chosen ones only while fine-tuning.
      lookahead_weight, lookahead_step: weight and relative length of the lookahead term of Θ's
        gradient (lookahead_alignment), computed only on the steps where Θ learns ...
      lookahead_subsample: ... on every n-th example of the batch.

    Returns:
      train_step(state, batch) -> (state, metrics); metrics: loss (), task_losses (N,) (each
      task's weighted loss), group_of_task (N,) (argmax Θ after the step).
    """

    def train_step(state: steps.TrainState, batch):
        searching = state.step < search_steps
        learning_theta = searching & (state.step >= warmup_steps)
        theta = state.params["group_logits"]
        key = jax.random.fold_in(jax.random.key(seed), state.step)
        noise = jax.random.gumbel(
            key, theta.shape if num_samples == 1 else (num_samples,) + theta.shape
        )
        branch_losses = pair_losses_fn(net, state.batch_stats, batch, probe_heads=probe_heads)

        def relaxed(logits):
            tau = temperature(state.step)
            if num_samples == 1:
                return gumbel_softmax(logits, noise, tau, hard=hard)
            return jax.vmap(lambda g: gumbel_softmax(logits, g, tau, hard=hard))(noise).mean(0)

        def total_loss(params):
            pair_losses, aux = branch_losses(params)
            heads_own = aux["heads_own"]
            logits = params["group_logits"]
            chosen = jax.nn.one_hot(assignment(logits), net.num_groups)
            weights = jnp.where(searching, relaxed(logits), chosen)
            loss, task_losses = grouped_objective(
                pair_losses,
                weights,
                logits,
                jnp.where(searching, entropy_weight, 0.0),
                jnp.where(searching, balance_weight, 0.0),
            )
            if heads_own is None:
                return loss, (loss, task_losses, aux)
            heads_loss = (jnp.where(searching, 1.0, chosen).T * heads_own).sum()
            return loss + heads_loss, (loss, task_losses, aux)

        (_, (loss, task_losses, aux)), grads = jax.value_and_grad(total_loss, has_aux=True)(
            state.params
        )
        theta_grad = grads["group_logits"]
        if lookahead_weight:
            examples, moments = every_nth_example(batch, aux["moments"], lookahead_subsample)
            now = losses.masked_task_mean(
                aux["example_losses"][:, ::lookahead_subsample], examples["mask"]
            )
            lookahead_losses = pair_losses_fn(net, state.batch_stats, examples, moments=moments)
            alignment = jax.lax.cond(
                learning_theta,
                lambda: lookahead_alignment(
                    lookahead_losses, state.params, grads["trunks"], now, lookahead_step
                ),
                lambda: jnp.zeros_like(now),
            )
            _, pull = jax.vjp(relaxed, theta)
            theta_grad = theta_grad + pull(-lookahead_weight * alignment.T)[0]
        grads = {**grads, "group_logits": jnp.where(learning_theta, theta_grad, 0.0)}
        state = steps.apply_gradients(state, optimizer, grads, aux["batch_stats"])
        kept = jnp.where(learning_theta, state.params["group_logits"], theta)
        state = state.replace(params={**state.params, "group_logits": kept})
        return state, {
            "loss": loss,
            "task_losses": task_losses,
            "group_of_task": assignment(kept).astype(jnp.float32),
        }

    return train_step
