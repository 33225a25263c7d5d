"""Early stopping over G networks at once, and keeping each network's best parameters.

Every epoch the loop hands over one validation objective per network, losses
(G,). A network improves when its loss is below its best so far; one that has
not improved for `patience` epochs is stopped: its best parameters stay frozen
(it may still train, unused). The run stops when every network has stopped.
For G = 1 this is the usual rule on the summed validation loss.

The record is plain JSON (saved in the checkpoint): best_loss, best_epoch,
epochs_without_improvement, each a list of G.
"""

import jax
import jax.numpy as jnp
import numpy as np


def initial_record(num_networks: int) -> dict:
    return {
        "best_loss": [float("inf")] * num_networks,
        "best_epoch": [0] * num_networks,
        "epochs_without_improvement": [0] * num_networks,
    }


def update(record: dict, losses: np.ndarray, epoch: int, patience: int, may_stop: bool = True):
    """(new record, improved (G,) bool, stopped: every network out of patience); epoch is 1-based.

    patience 0 = never stop (every network stays active); may_stop False (before
    config.early_stopping.min_steps) keeps every network active and the run going.
    """
    best = np.asarray(record["best_loss"], np.float64)
    waited = np.asarray(record["epochs_without_improvement"])
    best_epoch = np.asarray(record["best_epoch"])
    active = waited < patience if patience and may_stop else np.ones(len(best), bool)
    improved = active & (np.asarray(losses) < best)
    new = {
        "best_loss": np.where(improved, losses, best).tolist(),
        "best_epoch": np.where(improved, epoch, best_epoch).tolist(),
        "epochs_without_improvement": np.where(improved, 0, waited + 1).tolist(),
    }
    stopped = (
        bool(patience)
        and may_stop
        and bool((np.asarray(new["epochs_without_improvement"]) >= patience).all())
    )
    return new, improved, stopped


@jax.jit
def _where_stacked(improved, new, old):
    return jax.tree.map(
        lambda a, b: jnp.where(improved.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old
    )


@jax.jit
def _where_whole(improved, new, old):
    return jax.tree.map(lambda a, b: jnp.where(improved, a, b), new, old)


def keep_best(improved: np.ndarray, current, best, *, stacked: bool):
    """`best` with the networks that improved replaced by `current` (fresh buffers).

    stacked: leaves carry a leading (G,) network axis; else G = 1 and the whole tree is one network.
    """
    if stacked:
        return _where_stacked(jnp.asarray(improved), current, best)
    return _where_whole(jnp.asarray(improved[0]), current, best)
