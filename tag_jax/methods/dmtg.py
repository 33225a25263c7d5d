"""'dmtg': one-shot differentiable task grouping (Gao et al., ICML 2024; REFERENCE §6).

The network has K group branches (each a full `models.Trunk`, or a
`models.ResidualTail` after one `models.Stem` they share) and K x N heads, plus
task-to-group logits Θ (N, K), initialised to ones and trained with everything
else by the one optimizer. All branches and the K copies of every head start
as identical copies; only the Gumbel noise breaks the symmetry.

Every step draws ONE Gumbel sample g (N, K) from fold_in(key(config.seed), step)
(so a resumed run draws the same noise) and weighs the loss of head (k, n) on
branch k, ℓ[k, n], by y = softmax((Θ + g) / τ) over groups (straight-through
with config.dmtg.hard):
    loss = Σ_n Σ_k y[n, k] ℓ[k, n] + entropy_weight · mean_n H(softmax(Θ[n])).
With config.dmtg.finetune_epochs = F > 0 the last F of config.num_epochs
fine-tune the chosen network: from step (num_epochs - F) · steps_per_epoch on,
y is the one-hot of argmax Θ, the entropy term is off and Θ stays frozen, so
only the chosen branches and heads learn (the others get zero gradients; all K
branches are still computed, since the choice is data, not shape).

Read-out: task n -> group argmax_k Θ[n, k], empty groups dropped. eval_step
scores, for task n, head (argmax Θ[n], n) on that branch. The grouping reported
(groups.json, results.json) is the Θ of the parameters the run evaluates: the
early-stopping best with config.early_stopping.restore_best, else the final.

Robust options (config.dmtg, all off by default; README "DMTG: faithful by
default, robust options measured"): `warmup_steps`, `logits_optimizer`,
`balance_weight`, `num_samples`, `tau_schedule`, `logits_init_noise`,
`lookahead_weight` (below) and `probe_heads`: in the reference, head (k, n)
learns with weight y[n, k], so a task's heads on the branches it seldom samples
stay untrained, their ℓ[k, n]
look worse than the branch is, and Θ follows its first choices (rich get
richer). With probe_heads every head learns at full weight from its own loss on
its branch's features (held fixed there), while the branches still learn only
from Σ y ℓ: ℓ[k, n] then measures how well branch k's features serve task n.

Lookahead (lookahead_weight = w > 0): Θ also learns from TAG's lookahead affinity
between each branch's current group and each task. G_k is branch k's trunk
gradient of the step's weighted loss (the update that branch is about to take on
the tasks it now serves); a short step along it, of length
lookahead_step · ‖θ_k‖, changes task n's loss on that branch by
    a[k, n] = ℓ[k, n](θ_k) − ℓ[k, n](θ_k − s_k G_k),  s_k = lookahead_step ‖θ_k‖ / ‖G_k‖,
≈ s_k ⟨∇ℓ[k, n], G_k⟩: how much serving branch k's group helps task n (the
gradient's projection on the branch's direction, so a large group does not win by
size). a is scaled to mean |a| = 1 per step and Θ's gradient gains
−w · ∂(Σ_{n,k} y[n, k] a[k, n])/∂Θ through the same relaxed weights y: tasks move
towards branches whose updates help them. One extra forward of the K branches (and
of the shared stem, if any) on every `lookahead_subsample`-th example of the batch:
ℓ now is the step's own forward's on those examples, and the forward after the step
normalises with the whole batch's batch-norm moments moved by the change of those
examples' moments (models.BatchNorm; with every example, the batch's own moments
after the step, as a forward in training mode). A branch with no gradient (with
`hard`, one no task drew) has a[k, :] = 0: nothing pulls tasks towards it.
The loss differences ℓ[k, n] alone (what Θ learns from in the reference) are
near a batch's noise when every branch can fit every task; gradient alignment
separates groups from the first steps (README).

Outputs: `groups.json` (the TAG/CS selection format, plus `probabilities`
softmax(Θ) (N, K) and `probabilities_per_epoch`), `dmtg_assignment.png`.
"""

import dataclasses
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tag_jax import autotune, grouping, losses, models, optim, plots, reporting, stacking, steps
from tag_jax.errors import UserError
from tag_jax.methods.base import Method, one_network

SHARED_STEMS = ("none", "stem")
ALIGNMENT_FLOOR = 1e-4  # lookahead_alignment: mean |a| is scaled to 1 unless below this x mean ℓ
MIN_LOOKAHEAD_EXAMPLES = 8  # lookahead_subsample keeps this many (batch-norm moments from fewer)
LOGITS_OPTIMIZERS = ("shared", "sgd", "adam")
TAU_SCHEDULES = ("constant", "exponential", "linear")


def default_config() -> ml_collections.ConfigDict:
    """config.dmtg: K branches, K x N heads, task-to-group logits (N, K)."""
    cfg = ml_collections.ConfigDict()
    cfg.num_groups = 3  # K, an upper bound: groups no task picks are dropped
    cfg.tau_schedule = "constant"  # 'constant' (reference) | 'exponential' | 'linear'
    cfg.tau = 2.5  # 'constant' Gumbel-softmax temperature (CelebA 2.5, Taskonomy 4.0)
    cfg.tau_start = 5.0  # annealed schedules: tau_start -> tau_end over the search steps
    cfg.tau_end = 0.5
    cfg.hard = False  # straight-through (one-hot forward, soft gradient); reference: soft
    # + weight x mean over tasks of entropy(softmax(logits)): > 0 sharpens the assignment, < 0
    # keeps it spread; 0 = off (reference default).
    cfg.entropy_weight = 0.0
    cfg.shared_stem = "none"  # 'none' (K full trunks) | 'stem' (conv-BN-ReLU-pool shared)
    cfg.branch_strategy = "auto"  # 'vmap' | 'unrolled' | 'auto' (tag_jax/stacking.py)
    # Last this many of config.num_epochs: train only the arg-max heads and branches, logits frozen.
    cfg.finetune_epochs = 0
    # Robust variant (0 / 1 = the reference): first this many steps train the branches and heads
    # with the logits frozen at their start (a warm-up before the assignment moves).
    cfg.warmup_steps = 0
    # The logits' optimizer: 'shared' (the model's, reference) | 'sgd' | 'adam' at
    # logits_learning_rate. Plain SGD moves Θ in proportion to its (small, noisy) gradient, where
    # Adam moves every entry by about its learning rate whatever the gradient's size.
    cfg.logits_optimizer = "shared"
    cfg.logits_learning_rate = 0.0
    # + weight x (log K - entropy of the mean assignment over tasks): > 0 keeps every branch in use.
    cfg.balance_weight = 0.0
    cfg.num_samples = 1  # Gumbel samples per step, their relaxed weights averaged (reference: 1)
    # True: every head learns from its own loss at full weight on its branch's features, which only
    # the Gumbel-weighted losses train (reference False: head (k, n) learns with weight y[n, k], so
    # a task's heads on branches it seldom picks stay untrained and look worse than they are).
    cfg.probe_heads = False
    # Θ starts at 1 + logits_init_noise x N(0, 1) (reference 0: ones), a random first preference.
    cfg.logits_init_noise = 0.0
    # > 0: Θ also learns, at this weight, from how a short step of each branch along its update
    # changes each task's loss (the lookahead above; reference 0: off). lookahead_step: that
    # step's length relative to the norm of the branch's trunk parameters.
    cfg.lookahead_weight = 0.0
    cfg.lookahead_step = 0.003
    # The lookahead's forward runs on every n-th example of the batch (1: all; its batch norm then
    # estimates the whole batch's moments after the step), about 1/n of a forward of K branches.
    cfg.lookahead_subsample = 1
    return cfg


# config.dmtg.branch_strategy='auto' is decided by timing the DMTG step (tag_jax.autotune).
BRANCH_STRATEGY = autotune.Tunable(
    "dmtg.branch_strategy",
    lambda config, num_tasks: stacking.timing_candidates(
        config.dmtg.num_groups, differentiated=True
    ),
    key_paths=(
        "dmtg.num_groups",
        "dmtg.shared_stem",
        "dmtg.num_samples",
        "dmtg.probe_heads",
        "dmtg.lookahead_weight",
        "dmtg.lookahead_subsample",
    ),
)


def validate(config) -> None:
    cfg = config.dmtg
    for key, allowed in (
        ("branch_strategy", stacking.STRATEGIES),
        ("shared_stem", SHARED_STEMS),
        ("tau_schedule", TAU_SCHEDULES),
        ("logits_optimizer", LOGITS_OPTIMIZERS),
    ):
        if cfg[key] not in allowed:
            raise UserError(f"unknown config.dmtg.{key} {cfg[key]!r}; choose one of {allowed}")
    if cfg.num_groups < 1:
        raise UserError(f"config.dmtg.num_groups must be >= 1, got {cfg.num_groups}")
    taus = ("tau",) if cfg.tau_schedule == "constant" else ("tau_start", "tau_end")
    for key in taus:
        if not cfg[key] > 0:
            raise UserError(f"config.dmtg.{key} must be > 0, got {cfg[key]}")
    for key, low in (
        ("warmup_steps", 0),
        ("balance_weight", 0.0),
        ("num_samples", 1),
        ("logits_init_noise", 0.0),
        ("lookahead_weight", 0.0),
    ):
        if not cfg[key] >= low:
            raise UserError(f"config.dmtg.{key} must be >= {low}, got {cfg[key]}")
    if cfg.lookahead_weight > 0 and not 0 < cfg.lookahead_step < 1:
        raise UserError(
            f"config.dmtg.lookahead_step must be in (0, 1) (a step's length relative "
            f"to the branch's parameter norm), got {cfg.lookahead_step}"
        )
    subsample = cfg.lookahead_subsample
    if not (
        subsample >= 1
        and config.batch_size % subsample == 0
        and config.batch_size // subsample >= min(MIN_LOOKAHEAD_EXAMPLES, config.batch_size)
    ):
        raise UserError(
            f"config.dmtg.lookahead_subsample must divide config.batch_size = "
            f"{config.batch_size} and leave at least {MIN_LOOKAHEAD_EXAMPLES} examples "
            f"(the lookahead uses every n-th example), got {subsample}"
        )
    if cfg.logits_optimizer != "shared" and not cfg.logits_learning_rate > 0:
        raise UserError(
            f"config.dmtg.logits_optimizer={cfg.logits_optimizer!r} needs "
            f"config.dmtg.logits_learning_rate > 0, got {cfg.logits_learning_rate}"
        )
    if not 0 <= cfg.finetune_epochs < config.num_epochs:
        raise UserError(
            f"config.dmtg.finetune_epochs must be in [0, config.num_epochs) = "
            f"[0, {config.num_epochs}), got {cfg.finetune_epochs}"
        )


def build(config, task_names, image_shape, steps_per_epoch) -> Method:
    cfg = config.dmtg
    net = create_grouped_net(config, len(task_names))
    optimizer = with_logits_optimizer(
        optim.create_optimizer(config, steps_per_epoch),
        cfg.logits_optimizer,
        cfg.logits_learning_rate,
    )
    search_steps = (config.num_epochs - cfg.finetune_epochs) * steps_per_epoch
    return Method(
        init_state=lambda rng: steps.init_train_state(net, optimizer, rng, image_shape),
        train_step=make_dmtg_step(
            net,
            optimizer,
            seed=config.seed,
            temperature=temperature_schedule(cfg, search_steps),
            hard=cfg.hard,
            entropy_weight=cfg.entropy_weight,
            search_steps=search_steps,
            warmup_steps=cfg.warmup_steps,
            balance_weight=cfg.balance_weight,
            num_samples=cfg.num_samples,
            probe_heads=cfg.probe_heads,
            lookahead_weight=cfg.lookahead_weight,
            lookahead_step=cfg.lookahead_step,
            lookahead_subsample=cfg.lookahead_subsample,
        ),
        eval_step=steps.make_eval_step(net),
        trunk_passes=(step_trunk_passes(cfg),) * 2,
        served_groups=lambda params: groups_from_logits(task_names, params["group_logits"]),
        on_epoch_end=record_probabilities,
        finish=write_dmtg_outputs,
        **one_network(len(task_names)),
    )


def step_trunk_passes(dmtg_config):
    """Trunk passes of a step: K, plus K / lookahead_subsample lookahead forwards with the
    lookahead (counted on every step, though it runs only while Θ learns)."""
    cfg = dmtg_config
    passes = cfg.num_groups + (
        cfg.num_groups / cfg.lookahead_subsample if cfg.lookahead_weight else 0
    )
    return int(passes) if float(passes).is_integer() else passes


# --- the K-branch network ---


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


# --- sampling and the objective ---


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
    """DMTG step: Gumbel-weighted loss before `search_steps`, then the arg-max heads with Θ frozen.

    Θ learns from step `warmup_steps` to `search_steps`; before, its gradient is zero and it
    stays put. The relaxed weights are the mean over `num_samples` Gumbel draws (one branch
    forward serves them all). probe_heads: see pair_losses_fn; every head learns from its own
    loss while searching, the chosen ones only while fine-tuning. lookahead_weight /
    lookahead_step: the lookahead term of Θ's gradient (module docstring), computed only on the
    steps where Θ learns, on every `lookahead_subsample`-th example of the batch (module
    docstring). metrics: loss (), task_losses
    (N,) (each task's weighted loss), group_of_task (N,) (argmax Θ after the step).
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


# --- read-out and outputs ---


def probabilities(group_logits) -> np.ndarray:
    """softmax(Θ) over groups: (N, K)."""
    return np.asarray(jax.nn.softmax(jnp.asarray(group_logits, jnp.float32), axis=-1))


def record_probabilities(ctx, state, record):
    """Appends softmax(Θ) (N, K) to record['probabilities_per_epoch'] (saved with the checkpoint)."""
    del ctx
    per_epoch = record.get("probabilities_per_epoch", []) + [
        probabilities(state.params["group_logits"]).tolist()
    ]
    return state, {**record, "probabilities_per_epoch": per_epoch}


def groups_from_logits(task_names, group_logits) -> list:
    """Tasks grouped by argmax_k Θ[n, k]; groups in order of their first task, empty ones dropped."""
    chosen = np.argmax(np.asarray(group_logits), axis=-1)
    return [[name for name, g in zip(task_names, chosen) if g == k] for k in dict.fromkeys(chosen)]


def groups_record(task_names, group_logits, probabilities_per_epoch) -> dict:
    """groups.json: the TAG/CS selection format (one selection, max_groups = K) plus softmax(Θ)."""
    groups = groups_from_logits(task_names, group_logits)
    return {
        "method": "dmtg",
        "tasks": list(task_names),
        "selections": [
            {
                "max_groups": int(np.shape(group_logits)[-1]),
                "groups": groups,
                "score": None,
                "assignment": {name: next(g for g in groups if name in g) for name in task_names},
                "gap": None,
            }
        ],
        "probabilities": probabilities(group_logits).tolist(),
        "probabilities_per_epoch": list(probabilities_per_epoch),
    }


def write_dmtg_outputs(ctx, state, record, final) -> dict:
    """groups.json and dmtg_assignment.png of the evaluated parameters' Θ, in ctx.workdir."""
    del state
    groups = groups_record(
        ctx.task_names, final.params["group_logits"], record.get("probabilities_per_epoch", [])
    )
    reporting.write_json_atomic(os.path.join(ctx.workdir, "groups.json"), groups)
    plots.save(
        plots.assignment_probabilities(groups), os.path.join(ctx.workdir, "dmtg_assignment.png")
    )
    return {
        "selections": grouping.selection_summary(groups),
        "probabilities": groups["probabilities"],
    }
