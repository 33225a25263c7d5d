"""Loss weighting and gradient surgery of the MTL baselines, as pure functions
(docs/reference.md#mtl-baselines).

Uncertainty weighting (Kendall et al. 2018), GradNorm (Chen et al. 2018) and
PCGrad (Yu et al. 2020) in the form of the TAG CelebA code. Shapes: T tasks,
D flattened parameters.
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

LOG_SIGMA_CLIP = (0.01, 10.0)
GRADNORM_WEIGHT_CLIP = (0.1, 10.0)


def uncertainty_weighted_losses(losses: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """L_t / exp(2 c_t) + c_t with c_t = clip(s_t, 0.01, 10). losses, log_sigma (T,) -> (T,)."""
    clipped = jnp.clip(log_sigma, *LOG_SIGMA_CLIP)
    return losses / jnp.exp(2.0 * clipped) + clipped


def gradnorm_loss(weights, grad_norms, losses, initial_losses, alpha: float) -> jax.Array:
    """GradNorm's loss sum_i |G_i - stopgrad(mean(G) * r_i^alpha)| -> ().

    weights w (T,); grad_norms (T,): ||dL_i/dW|| of the UNWEIGHTED losses, so that
    G_i = ||d(w_i L_i)/dW|| = |w_i| grad_norms_i; losses, initial_losses (T,):
    r_i = (L_i / L_i(0)) / mean_k (L_k / L_k(0)).
    """
    weighted_norms = jnp.abs(weights) * grad_norms
    loss_ratios = losses / initial_losses
    targets = weighted_norms.mean() * (loss_ratios / loss_ratios.mean()) ** alpha
    return jnp.abs(weighted_norms - jax.lax.stop_gradient(targets)).sum()


def renormalize_task_weights(weights: jax.Array) -> jax.Array:
    """GradNorm's step after the update: clip to [0.1, 10], then rescale to sum to T.
    (T,) -> (T,)."""
    clipped = jnp.clip(weights, *GRADNORM_WEIGHT_CLIP)
    return clipped * (weights.shape[0] / clipped.sum())


def project_conflicting_gradients(task_grads: jax.Array) -> jax.Array:
    """PCGrad's projection of every task gradient: (T, D) -> (T, D).

    Row i starts as g_i and, for k = 0, ..., T-1 in this order, whenever the
    running row conflicts with the ORIGINAL g_k (<g_i, g_k> < 0), loses its
    component along g_k: g_i <- g_i - <g_i, g_k> / ||g_k||^2 g_k. Like the
    reference, k runs over every task, i included (a running row can turn against
    its own original gradient after two or more projections).
    """
    num_tasks = task_grads.shape[0]
    # Elementwise products, not dot: exact float32 on every backend, like the reference.
    squared_norms = jnp.sum(task_grads * task_grads, axis=1)

    def project_row(grad):
        def project_off(k, grad):
            inner = jnp.sum(grad * task_grads[k])
            coefficient = jnp.where(inner < 0, inner / squared_norms[k], 0.0)
            return grad - coefficient * task_grads[k]

        return jax.lax.fori_loop(0, num_tasks, project_off, grad)

    return jax.vmap(project_row)(task_grads)


def pcgrad_gradient(task_grads):
    """Sum over tasks of the PCGrad-projected gradients: pytree, leaves (T, ...) -> leaves (...)."""
    _, unravel = ravel_pytree(jax.tree.map(lambda g: g[0], task_grads))
    flat = jax.vmap(lambda tree: ravel_pytree(tree)[0])(task_grads)
    return unravel(project_conflicting_gradients(flat).sum(0))
