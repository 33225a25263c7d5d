"""The stacked networks of 'groups', 'pairs' and 'random' (tag_jax.methods.groups): G copies of one
MultiTaskNet trained side by side, their step, and their sharding over the 'networks' mesh axis."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tag_jax import models, sharding, stacking, steps
from tag_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class StackedNets:
    """G copies of one MultiTaskNet, parameters and batch statistics stacked (G, ...).

    `init` has the Flax signature steps.init_train_state uses; every network starts
    from the same initialisation. With copy_seeds (S - 1 seeds), the G networks are
    S seed-major copies of G / S networks: copy 0 starts from init's rng, copy s from
    jax.random.key(copy_seeds[s - 1]), and training batches carry a leading (S,) axis,
    copy s training on batch[s]. strategy: resolved (tag_jax.stacking).
    """

    model: models.MultiTaskNet
    num_networks: int
    strategy: str
    copy_seeds: tuple = ()

    def init(self, rng, image, *, train: bool = False) -> dict:
        keys = [rng] + [jax.random.key(seed) for seed in self.copy_seeds]
        per_copy = self.num_networks // len(keys)
        copies = [stacking.tile(self.model.init(key, image, train=train), per_copy) for key in keys]
        return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *copies)

    def task_losses(self, params, batch_stats, batch):
        """Training forward of every network: losses (G, T), updated batch statistics (G, ...)."""
        if not self.copy_seeds:
            return stacking.map_stacked(
                lambda p, s: steps.task_losses(self.model, p, s, batch),
                params,
                batch_stats,
                strategy=self.strategy,
            )
        per_copy = self.num_networks // (len(self.copy_seeds) + 1)
        batches = jax.tree.map(lambda leaf: jnp.repeat(leaf, per_copy, axis=0), batch)
        return stacking.map_stacked(
            lambda p, s, b: steps.task_losses(self.model, p, s, b),
            params,
            batch_stats,
            batches,
            strategy=self.strategy,
        )

    def eval_sums(self, params, batch_stats, batch) -> dict:
        """Every network's sums on a padded batch: loss_sum (G, T), correct (G, T), count ()."""
        sums = stacking.map_stacked(
            lambda p, s: steps.eval_sums(self.model, p, s, batch),
            params,
            batch_stats,
            strategy=self.strategy,
        )
        return {**sums, "count": sums["count"][0]}

    def example_values(self, params, batch_stats, batch) -> dict:
        """Every network's values on every example of a padded batch: loss (G, B, T), correct
        (G, B, T) (steps.example_values)."""
        return stacking.map_stacked(
            lambda p, s: steps.example_values(self.model, p, s, batch),
            params,
            batch_stats,
            strategy=self.strategy,
        )


def member_mean(losses, masks):
    """(T,) mean of each task's loss over the networks training it; a NaN anywhere shows."""
    return jnp.where(masks > 0, losses, 0.0).sum(0) / masks.sum(0)


def make_groups_step(nets: StackedNets, optimizer, masks):
    """One step of every network on its members' loss sum.

    metrics: loss () = sum over networks; task_losses (T,) = member_mean (so the
    loop's finiteness check sees every network).
    """
    masks = jnp.asarray(masks)

    def train_step(state: steps.TrainState, batch):
        def objective(params):
            losses, batch_stats = nets.task_losses(params, state.batch_stats, batch)
            return (masks * losses).sum(), (losses, batch_stats)

        grads, (losses, batch_stats) = jax.grad(objective, has_aux=True)(state.params)
        state = steps.apply_gradients(state, optimizer, grads, batch_stats)
        return state, {"loss": (masks * losses).sum(), "task_losses": member_mean(losses, masks)}

    return train_step


def network_axis_sharding(init_state, num_networks: int, mesh):
    """Every non-scalar state array (all are stacked (G, ...)) split over 'networks'; scalars
    replicated."""
    split = mesh.shape[sharding.NETWORKS]
    if num_networks % split:
        raise UserError(
            f"{num_networks} networks cannot be split evenly over config.mesh.networks="
            f"{split}; choose a divisor of {num_networks}"
        )
    shapes = jax.eval_shape(init_state, jax.random.key(0))
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, P(sharding.NETWORKS) if leaf.ndim else P()), shapes
    )
