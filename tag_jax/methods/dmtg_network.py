"""DMTG's network: K group branches (each a `models.Trunk`, or a `models.ResidualTail` after one
shared `models.Stem`), K x N heads and the task-to-group logits Θ (N, K) (tag_jax.methods.dmtg)."""

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tag_jax import models, stacking


def apply_with_stats(
    module: nn.Module, params, batch_stats, x, *, train: bool, mask=None, moments=None
):
    """(module(x), batch statistics, batch-norm moments). Training: the statistics updated from the
    batch's real rows (mask (B,)) and every BatchNorm's moments (models.BatchNorm); with another
    forward's `moments` given, normalised from those (a lookahead), statistics unchanged.
    Inference: running averages, statistics unchanged, moments None."""
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        return module.apply(variables, x, train=False), batch_stats, None
    if moments is not None:
        out = module.apply({**variables, "batch_moments": moments}, x, train=True, mask=mask)
        return out, batch_stats, moments
    out, updates = module.apply(
        variables, x, train=True, mask=mask, mutable=["batch_stats", "batch_moments"]
    )
    return out, updates["batch_stats"], updates.get("batch_moments", {})


def assignment(group_logits: jax.Array) -> jax.Array:
    """Group of every task, argmax_k Θ[n, k]: (N, K) -> (N,) int."""
    return jnp.argmax(group_logits, axis=-1)


def assigned_logits(logits: jax.Array, groups: jax.Array) -> jax.Array:
    """Task n's logits of head (groups[n], n): logits (K, B, N, C), groups (N,) -> (B, N, C)."""
    return jnp.moveaxis(logits[groups, :, jnp.arange(groups.shape[0])], 0, 1)


@dataclasses.dataclass(frozen=True)
class GroupedNet:
    """K branches `trunk` (after one shared `stem`, if any), K x N `heads`, group logits Θ (N, K).

    params: {'stem' (with a stem), 'trunks': trunk params stacked (K, ...), 'heads': TaskHeads
    params stacked (K, N, ...), 'group_logits': Θ (N, K)}; batch_stats: {'stem', 'trunks'}.
    `init` and `apply` have the Flax signatures steps.init_train_state and steps.make_eval_step use.
    """

    trunk: nn.Module
    heads: models.TaskHeads
    num_groups: int
    strategy: str  # resolved: 'vmap' | 'unrolled' | 'map' (tag_jax.stacking)
    stem: Optional[nn.Module] = None
    logits_init_noise: float = 0.0

    def init(self, rng, image, *, train: bool = False) -> dict:
        """One branch and one head set initialised, then tiled K times; Θ (N, K) = ones, plus
        logits_init_noise x N(0, 1)."""
        del train
        stem_rng, trunk_rng, heads_rng = jax.random.split(rng, 3)
        params, batch_stats = {}, {}
        if self.stem is not None:
            stem_vars = self.stem.init(stem_rng, image, train=False)
            params["stem"], batch_stats["stem"] = stem_vars["params"], stem_vars["batch_stats"]
            image = self.stem.apply(stem_vars, image, train=False)
        trunk_vars = self.trunk.init(trunk_rng, image, train=False)
        heads_params = self.heads.init(heads_rng, self.trunk.apply(trunk_vars, image, train=False))
        params.update(
            trunks=stacking.tile(trunk_vars["params"], self.num_groups),
            heads=stacking.tile(heads_params["params"], self.num_groups),
            group_logits=initial_logits(
                jax.random.fold_in(rng, 3),
                self.heads.num_tasks,
                self.num_groups,
                self.logits_init_noise,
            ),
        )
        batch_stats["trunks"] = stacking.tile(trunk_vars["batch_stats"], self.num_groups)
        return {"params": params, "batch_stats": batch_stats}

    def branch_features(self, params, batch_stats, image, *, train: bool, mask=None, moments=None):
        """Features of every branch (K, B, F), the (updated) batch statistics and the batch-norm
        moments ({'trunks'} and, with a shared stem, 'stem'; every BatchNorm's 'mean' and
        'mean_square' (C,), 'example_mean' and 'example_mean_square' (B, C), stacked (K, ...) in
        'trunks'; None when not training). With another forward's `moments` given: normalised from
        those (apply_with_stats)."""
        new_stats, new_moments = {}, {}
        if self.stem is not None:
            image, new_stats["stem"], new_moments["stem"] = apply_with_stats(
                self.stem,
                params["stem"],
                batch_stats["stem"],
                image,
                train=train,
                mask=mask,
                moments=None if moments is None else moments["stem"],
            )

        def one_branch(trunk_params, trunk_stats, trunk_moments):
            return apply_with_stats(
                self.trunk,
                trunk_params,
                trunk_stats,
                image,
                train=train,
                mask=mask,
                moments=trunk_moments,
            )

        features, new_stats["trunks"], new_moments["trunks"] = stacking.map_stacked(
            one_branch,
            params["trunks"],
            batch_stats["trunks"],
            None if moments is None else moments["trunks"],
            strategy=self.strategy,
        )
        return features, new_stats, new_moments

    def head_logits(self, heads_params, features):
        """Logits of every head on its branch's features: (K, B, F) -> (K, B, N, C)."""
        return jax.vmap(lambda p, f: self.heads.apply({"params": p}, f))(heads_params, features)

    def branch_logits(self, params, batch_stats, image, *, train: bool, mask=None):
        """Logits of every head on its branch (K, B, N, C) and the (updated) batch statistics."""
        features, new_stats, _ = self.branch_features(
            params, batch_stats, image, train=train, mask=mask
        )
        return self.head_logits(params["heads"], features), new_stats

    def apply(self, variables, image, *, train: bool = False):
        """Inference forward: for task n, head (argmax Θ[n], n) on that branch -> (B, N, C)."""
        if train:
            raise ValueError("GroupedNet.apply is inference only; training uses branch_logits")
        params = variables["params"]
        logits, _ = self.branch_logits(params, variables["batch_stats"], image, train=False)
        return assigned_logits(logits, assignment(params["group_logits"]))


def initial_logits(rng, num_tasks: int, num_groups: int, noise: float) -> jax.Array:
    """Θ at the start, (N, K): ones (the reference), plus noise x N(0, 1) when noise > 0."""
    ones = jnp.ones((num_tasks, num_groups))
    return ones if noise == 0 else ones + noise * jax.random.normal(rng, ones.shape)


def create_grouped_net(config, num_tasks: int) -> GroupedNet:
    part = dict(
        width=config.model.width,
        conv=models.resolve_conv_impl(config.model.conv),
        bn_epsilon=config.model.bn_epsilon,
        bn_momentum=config.model.bn_momentum,
    )
    with_stem = config.dmtg.shared_stem == "stem"
    return GroupedNet(
        trunk=models.ResidualTail(**part) if with_stem else models.Trunk(**part),
        heads=models.TaskHeads(num_tasks, config.model.num_classes),
        num_groups=config.dmtg.num_groups,
        strategy=stacking.resolve(
            config.dmtg.branch_strategy, config.dmtg.num_groups, differentiated=True
        ),
        stem=models.Stem(**part) if with_stem else None,
        logits_init_noise=config.dmtg.logits_init_noise,
    )
