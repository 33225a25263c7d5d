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

Cheaper estimators of the lookahead affinity (config.affinity.estimator 'first_order',
'sketched') and their derivations: tag_jax/affinity_estimators.py.
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


def losses_and_task_gradients(
    losses_fn: Callable, params, batch, *, strategy: str = "auto", chunk_size: int | None = None
):
    """(losses (T,), per-task gradients: pytree with leaves (T, *param_shape)) from ONE vjp of the
    loss vector and T cotangent pulls."""
    base_losses, vjp_fn = jax.vjp(lambda p: losses_fn(p, batch), params)
    return base_losses, per_task_gradients(
        vjp_fn, base_losses.shape[0], strategy=strategy, chunk_size=chunk_size
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
    base_losses, task_grads = losses_and_task_gradients(
        losses_fn, params, batch, strategy=strategy, chunk_size=chunk_size
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
    base_losses, task_grads = losses_and_task_gradients(
        losses_fn, params, batch, strategy=strategy, chunk_size=chunk_size
    )
    return cosine_from_task_gradients(task_grads, kernels_only=kernels_only)
