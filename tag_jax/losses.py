"""The task losses every method trains on: softmax cross-entropy per example and per task."""

import jax
import jax.numpy as jnp


def softmax_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of every example and task:
    logits (B, T, C), labels (B, T) -> (B, T)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def per_task_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy per task over real examples (mask (B,) in {0, 1}) -> (T,)."""
    return masked_task_mean(softmax_nll(logits, labels), mask)


def masked_task_mean(example_losses: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over real examples (mask (B,) in {0, 1}) of per-example losses (..., B, T) -> (..., T)
    (leading axes, e.g. DMTG's K branches, are kept)."""
    return (example_losses * mask[:, None]).sum(-2) / jnp.maximum(mask.sum(), 1.0)


def example_values(logits: jax.Array, labels: jax.Array) -> dict:
    """Every example's loss (softmax cross-entropy) and correct (1.0 where the arg-max class is
    the label): logits (B, T, C), labels (B, T) -> (B, T) each."""
    return {
        "loss": softmax_nll(logits, labels),
        "correct": (logits.argmax(-1) == labels).astype(jnp.float32),
    }


def eval_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
    """Sums over the real examples of one batch: loss_sum (T,), correct (T,), count ()."""
    values = example_values(logits, labels)
    return {
        "loss_sum": (values["loss"] * mask[:, None]).sum(0),
        "correct": (values["correct"] * mask[:, None]).sum(0),
        "count": mask.sum(),
    }
