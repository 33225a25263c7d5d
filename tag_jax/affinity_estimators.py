"""Cheaper estimators of TAG's lookahead affinity: 'first_order' and 'sketched'.

Orientation as in tag_jax.affinity: `A[s, t]` = effect of a step on SOURCE s (row) on TARGET
task t (column).

Estimators of the lookahead affinity (config.affinity.estimator). With the
source direction d_s = g_s + delta, g_s = sum_{u in s} g_u (per-task gradients
of the shared parameters) and delta = weight_decay * theta + momentum * trace
(0 for the paper's 'sgd' lookahead without weight decay):

- 'exact' (TAG): theta'_s = theta - lr d_s and A[s, t] = 1 - L_t(theta'_s) / L_t(theta)
  (divided by lr when scale_by_lr). T pulls and S lookahead forwards.
- 'first_order': Taylor's theorem gives
    L_t(theta - lr d_s) = L_t(theta) - lr <g_t, d_s> + (lr^2 / 2) d_s^T H_t d_s + ...,
  so A[s, t] = lr (<g_s, g_t> + <delta, g_t>) / L_t(theta) + O(lr^2). In matrix
  form A = lr (W G + 1 b^T) diag(1 / L) with the Gram matrix G = J J^T (T, T),
  J (T, P) the Jacobian of the loss vector, b = J delta (T,) and W (S, T) the
  0/1 source membership. Scaled by 1 / lr it no longer depends on lr, and the
  exact scaled affinity tends to it as lr -> 0 (the error is lr d^T H_t d / (2 L_t)).
  The momentum / weight-decay direction enters exactly through b. Cost: the T
  pulls (which the measured step makes anyway) and one (T, P) x (P, T) product;
  no lookahead forward.
- 'sketched': G estimated from m = sketch_size random directions v_i of the
  shared parameters, Rademacher (E[v v^T] = I): u_i = J v_i (T,) is ONE
  forward-mode product (a jvp of the loss vector), and
    G_hat = (1/m) sum_i u_i u_i^T,  E[G_hat] = J E[v v^T] J^T = G.
  Its variance is (||g_s||^2 ||g_t||^2 + <g_s, g_t>^2 - 2 sum_p g_sp^2 g_tp^2) / m
  (Rademacher; Gaussian directions lack the last term): pairs with large
  gradients and small cosine are the noisiest. b = J delta is exact (one more
  jvp, only when delta != 0). The first-order formula above then gives A. Cost:
  one linearisation (a forward) and m tangent evaluations, none of which grows
  with T; directions come from a key folded with the step (deterministic on
  resume). Nothing here needs per-task gradients.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from tag_jax import stacking
from tag_jax.affinity import losses_and_task_gradients, source_weights


def lookahead_direction(params, *, momentum=0.0, trace=None, weight_decay=0.0):
    """delta = weight_decay * theta + momentum * trace (params-shaped), or None when it is zero."""
    if trace is None and not weight_decay:
        return None
    direction = jax.tree.map(lambda p: weight_decay * p, params)
    if trace is not None:
        direction = jax.tree.map(lambda d, m: d + momentum * m, direction, trace)
    return direction


def gram_from_task_gradients(task_grads) -> jax.Array:
    """(T, T) inner products G[s, t] = <g_s, g_t> of per-task gradients (leaves (T, ...))."""
    flats = [g.reshape(g.shape[0], -1) for g in jax.tree.leaves(task_grads)]
    return sum(f @ f.T for f in flats)


def direction_products(task_grads, direction) -> jax.Array:
    """(T,) b[t] = <g_t, direction>: per-task gradients (leaves (T, ...)) against a params tree."""
    pairs = zip(jax.tree.leaves(task_grads), jax.tree.leaves(direction))
    return sum(g.reshape(g.shape[0], -1) @ d.reshape(-1) for g, d in pairs)


def first_order_from_gram(
    base_losses, gram, products=None, *, learning_rate, scale_by_lr=True, sources=None
) -> jax.Array:
    """(S, T) first-order affinity lr (W G + 1 b^T) / L (module docstring); scale_by_lr drops lr.

    base_losses (T,); gram (T, T) = <g_s, g_t>; products (T,) = <g_t, delta> or None (delta = 0).
    """
    weights = jnp.asarray(source_weights(base_losses.shape[0], sources))
    change = weights @ gram
    if products is not None:
        change = change + products[None, :]
    ratio = change / base_losses[None, :]
    return ratio if scale_by_lr else learning_rate * ratio


def first_order_from_task_gradients(
    params,
    base_losses,
    task_grads,
    *,
    learning_rate,
    momentum=0.0,
    trace=None,
    weight_decay=0.0,
    scale_by_lr=True,
    sources=None,
) -> jax.Array:
    """First-order affinity (S, T) from the losses (T,) and per-task gradients (T, ...) at
    params."""
    direction = lookahead_direction(
        params, momentum=momentum, trace=trace, weight_decay=weight_decay
    )
    products = None if direction is None else direction_products(task_grads, direction)
    return first_order_from_gram(
        base_losses,
        gram_from_task_gradients(task_grads),
        products,
        learning_rate=learning_rate,
        scale_by_lr=scale_by_lr,
        sources=sources,
    )


def first_order_affinity(
    losses_fn: Callable,
    params,
    batch,
    *,
    learning_rate,
    momentum=0.0,
    trace=None,
    weight_decay=0.0,
    scale_by_lr=True,
    sources=None,
    strategy="auto",
    chunk_size=None,
) -> jax.Array:
    """First-order estimate of `lookahead_affinity`: T gradient pulls, no lookahead forward.

    Args: as lookahead_affinity.

    Returns:
      A (S, T) = lr (<g_s, g_t> + <delta, g_t>) / L_t (module docstring), without lr when
      scale_by_lr; row = source, column = target task.
    """
    base_losses, task_grads = losses_and_task_gradients(
        losses_fn, params, batch, strategy=strategy, chunk_size=chunk_size
    )
    return first_order_from_task_gradients(
        params,
        base_losses,
        task_grads,
        learning_rate=learning_rate,
        momentum=momentum,
        trace=trace,
        weight_decay=weight_decay,
        scale_by_lr=scale_by_lr,
        sources=sources,
    )


def rademacher_directions(key, params, count: int):
    """`count` random +-1 directions like params: leaves (count, *param_shape), E[v v^T] = I."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            jax.random.rademacher(k, (count, *leaf.shape), jnp.int32).astype(leaf.dtype)
            for k, leaf in zip(keys, leaves)
        ],
    )


def sketched_gram(
    losses_fn: Callable,
    params,
    batch,
    directions,
    *,
    direction=None,
    strategy="auto",
    chunk_size=None,
):
    """(base losses (T,), G_hat (T, T), J delta (T,) or None) from forward-mode products.

    directions: leaves (m, *param_shape) with E[v v^T] = I; G_hat = (1/m) sum_i (J v_i)(J v_i)^T.
    One linearisation, then the m tangent evaluations batched by `strategy`.
    """
    base_losses, linear = jax.linearize(lambda p: losses_fn(p, batch), params)
    count = jax.tree.leaves(directions)[0].shape[0]
    projections = stacking.map_stacked(
        linear, directions, strategy=stacking.resolve(strategy, count), chunk_size=chunk_size
    )  # (m, T)
    gram = projections.T @ projections / count
    return base_losses, gram, None if direction is None else linear(direction)


def sketched_affinity(
    losses_fn: Callable,
    params,
    batch,
    *,
    key,
    sketch_size: int,
    learning_rate,
    momentum=0.0,
    trace=None,
    weight_decay=0.0,
    scale_by_lr=True,
    sources=None,
    strategy="auto",
    chunk_size=None,
) -> jax.Array:
    """Sketched first-order estimate of `lookahead_affinity`: the gradient inner products from
    sketch_size forward-mode products along random directions (cost independent of T).

    Args:
      key: PRNG key of the Rademacher directions (fold the step in for a new draw each step).
      sketch_size: m, the number of directions; the variance of the estimate falls as 1 / m.
      others: as lookahead_affinity.

    Returns:
      A (S, T): row = source, column = target task (unbiased estimate of first_order_affinity's).
    """
    direction = lookahead_direction(
        params, momentum=momentum, trace=trace, weight_decay=weight_decay
    )
    base_losses, gram, products = sketched_gram(
        losses_fn,
        params,
        batch,
        rademacher_directions(key, params, sketch_size),
        direction=direction,
        strategy=strategy,
        chunk_size=chunk_size,
    )
    return first_order_from_gram(
        base_losses,
        gram,
        products,
        learning_rate=learning_rate,
        scale_by_lr=scale_by_lr,
        sources=sources,
    )
