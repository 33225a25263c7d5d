"""Inter-task affinity: TAG's lookahead affinity and the gradient-cosine (CS) baseline.

Orientation everywhere: `A[s, t]` = effect of a step on SOURCE s (row) on TARGET
task t (column). Selection reads "affinity onto t from u" = A[u, t] (transpose).

Every source is computed inside one traced function. Per-task gradients come
from ONE vjp of the (T,) loss vector and T cotangent pulls; a multi-task
source's gradient is the sum of its members' (linearity), so `sources` never
costs extra backward passes. `strategy` says how the T pulls and the S
lookahead forwards are batched: 'unrolled', 'vmap', 'map' (`lax.map` in chunks
of `chunk_size`) or 'auto' (tag_jax.stacking.resolve: on CPU unrolled up to 16
pulls or forwards and mapped beyond, vmap on GPU/TPU). The benchmark
`benchmarks/affinity_step.py` measures them.

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

import itertools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tag_jax import stacking

ORDERS = ("singles", "1", "-1")
ESTIMATORS = ("exact", "first_order", "sketched")


def sources_for_order(num_tasks: int, order: str) -> list[tuple[int, ...]]:
    """Sources of config.affinity.order (docs/reference.md#tag-lookahead-affinity): 'singles' -> T
    single tasks; '1' -> singles + all tasks; '-1' -> every non-empty subset."""
    singles = [(t,) for t in range(num_tasks)]
    if order == "singles":
        return singles
    if order == "1":
        return singles + [tuple(range(num_tasks))]
    if order == "-1":
        return [
            c for k in range(1, num_tasks + 1) for c in itertools.combinations(range(num_tasks), k)
        ]
    raise ValueError(f"affinity order must be one of {ORDERS}, got {order!r}")


def source_weights(num_tasks: int, sources: Sequence[Sequence[int]] | None) -> np.ndarray:
    """(S, T) 0/1 matrix: row s marks the tasks whose losses make up source s."""
    sources = [(t,) for t in range(num_tasks)] if sources is None else sources
    weights = np.zeros((len(sources), num_tasks), np.float32)
    for s, members in enumerate(sources):
        weights[s, list(members)] = 1.0
    return weights


def per_task_gradients(
    vjp_fn: Callable, num_tasks: int, *, strategy: str = "auto", chunk_size: int | None = None
):
    """Gradients of each of the T losses: pytree with leaves (T, *param_shape)."""
    eye = jnp.eye(num_tasks, dtype=jnp.float32)
    return stacking.map_stacked(
        lambda e: vjp_fn(e)[0],
        eye,
        strategy=stacking.resolve(strategy, num_tasks),
        chunk_size=chunk_size,
    )


def affinity_from_task_gradients(
    losses_fn: Callable,
    params,
    batch,
    base_losses,
    task_grads,
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
    """Lookahead affinity (S, T) from the losses (T,) at `params` and per-task gradients (T, ...)
    (arguments as lookahead_affinity)."""
    weights = jnp.asarray(source_weights(base_losses.shape[0], sources))
    direction = jax.tree.map(lambda p: weight_decay * p, params)
    if trace is not None:
        direction = jax.tree.map(lambda d, m: d + momentum * m, direction, trace)
    lookahead_params = jax.tree.map(
        lambda p, g, d: p - learning_rate * (jnp.tensordot(weights, g, axes=1) + d),
        params,
        task_grads,
        direction,
    )
    lookahead_losses = stacking.map_stacked(
        lambda p: losses_fn(p, batch),
        lookahead_params,
        strategy=stacking.resolve(strategy, weights.shape[0]),
        chunk_size=chunk_size,
    )
    ratio = 1.0 - lookahead_losses / base_losses[None, :]
    return ratio / learning_rate if scale_by_lr else ratio


def lookahead_affinity(
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
    """TAG's lookahead affinity (docs/reference.md#tag-lookahead-affinity), 'exact' estimator.

    For source s (a single task, or a tuple of task indices whose losses are summed) the
    lookahead is
      theta'_s = theta - lr * (g_s + weight_decay * theta + momentum * trace)
    (without `trace`: theta - lr * (g_s + weight_decay * theta)), and
      A[s, t] = 1 - L_t(theta'_s) / L_t(theta), divided by lr when `scale_by_lr`.

    Args:
      losses_fn: losses_fn(params, batch) -> (T,) per-task losses as a function of the SHARED
        parameters only (heads and batch statistics held: steps.shared_losses_fn).
      params: the shared parameters theta (a pytree).
      batch: losses_fn's batch, the same before and after the lookahead.
      learning_rate: lr of the lookahead step (a scalar, may be traced).
      momentum, trace: the momentum term of the direction (trace: a params-shaped tree; None:
        no term).
      weight_decay: coupled L2 added to the direction.
      scale_by_lr: divide by lr (both reference codes) or not (the paper).
      sources: S tuples of task indices (sources_for_order); None = the T single tasks.
      strategy, chunk_size: how the T gradient pulls and the S lookahead forwards are batched:
        'unrolled', 'vmap', 'map' (lax.map in chunks of chunk_size) or 'auto'
        (tag_jax.stacking.resolve).

    Returns:
      A (S, T): row = source, column = target task.
    """
    base_losses, vjp_fn = jax.vjp(lambda p: losses_fn(p, batch), params)
    task_grads = per_task_gradients(
        vjp_fn, base_losses.shape[0], strategy=strategy, chunk_size=chunk_size
    )
    return affinity_from_task_gradients(
        losses_fn,
        params,
        batch,
        base_losses,
        task_grads,
        learning_rate=learning_rate,
        momentum=momentum,
        trace=trace,
        weight_decay=weight_decay,
        scale_by_lr=scale_by_lr,
        sources=sources,
        strategy=strategy,
        chunk_size=chunk_size,
    )


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
    base_losses, vjp_fn = jax.vjp(lambda p: losses_fn(p, batch), params)
    task_grads = per_task_gradients(
        vjp_fn, base_losses.shape[0], strategy=strategy, chunk_size=chunk_size
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


def cosine_from_task_gradients(task_grads, *, kernels_only=True) -> jax.Array:
    """(T, T) cosine similarity of per-task gradients (leaves (T, ...)), flattened and concatenated.

    kernels_only keeps leaves whose per-task shape has rank > 1 (conv/dense kernels).
    """
    leaves = [
        g.reshape(g.shape[0], -1)
        for g in jax.tree.leaves(task_grads)
        if not kernels_only or g.ndim > 2
    ]
    flat = jnp.concatenate(leaves, axis=1)
    unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def gradient_cosine_similarity(
    losses_fn: Callable, params, batch, *, kernels_only=True, strategy="auto", chunk_size=None
) -> jax.Array:
    """The CS baseline (docs/reference.md#cs-gradient-cosine-similarity).

    Args:
      losses_fn, params, batch, strategy, chunk_size: as lookahead_affinity.
      kernels_only: only gradient leaves of rank > 1 per task (convolution and dense kernels), as
        the reference code.

    Returns:
      (T, T) cosine between the per-task gradients of the shared parameters, flattened and
      concatenated (symmetric, ones on the diagonal).
    """
    base_losses, vjp_fn = jax.vjp(lambda p: losses_fn(p, batch), params)
    task_grads = per_task_gradients(
        vjp_fn, base_losses.shape[0], strategy=strategy, chunk_size=chunk_size
    )
    return cosine_from_task_gradients(task_grads, kernels_only=kernels_only)
