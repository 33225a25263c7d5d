"""'dmtg': one-shot differentiable task grouping (Gao et al., ICML 2024;
docs/reference.md#dmtg-differentiable-grouping).

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

This module holds the config, its checks and the builder; the network is in
`dmtg_network`, the step (sampling, objective, lookahead) in `dmtg_step`, the read-out and
outputs in `dmtg_outputs`.
"""

import ml_collections

from tag_jax import autotune, config_checks, optim, stacking, steps
from tag_jax.errors import UserError
from tag_jax.methods import dmtg_confidence
from tag_jax.methods.base import Method, one_network
from tag_jax.methods.dmtg_network import create_grouped_net
from tag_jax.methods.dmtg_outputs import (
    groups_from_logits,
    record_probabilities,
    write_dmtg_outputs,
)
from tag_jax.methods.dmtg_step import make_dmtg_step, temperature_schedule, with_logits_optimizer

SHARED_STEMS = ("none", "stem")
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
    # How sure is the grouping: groupings drawn from softmax(Θ) at the search's epoch ends
    # (tag_jax/methods/dmtg_confidence.py, docs/dmtg_confidence.md).
    cfg.confidence = dmtg_confidence.confidence_config()
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


def finetune_before_the_end(config) -> None:
    if not config.dmtg.finetune_epochs < config.num_epochs:
        raise UserError(
            f"config.dmtg.finetune_epochs must be in [0, config.num_epochs) = "
            f"[0, {config.num_epochs}), got {config.dmtg.finetune_epochs}"
        )


def lookahead_subsample_divides_the_batch(config) -> None:
    subsample, batch = config.dmtg.lookahead_subsample, config.batch_size
    if batch % subsample or batch // subsample < min(MIN_LOOKAHEAD_EXAMPLES, batch):
        raise UserError(
            f"config.dmtg.lookahead_subsample must divide config.batch_size = {batch} and leave "
            f"at least {MIN_LOOKAHEAD_EXAMPLES} examples (the lookahead uses every n-th example), "
            f"got {subsample}"
        )


def own_logits_optimizer_needs_a_rate(config) -> None:
    cfg = config.dmtg
    if cfg.logits_optimizer != "shared" and not cfg.logits_learning_rate > 0:
        raise UserError(
            f"config.dmtg.logits_optimizer={cfg.logits_optimizer!r} needs "
            f"config.dmtg.logits_learning_rate > 0, got {cfg.logits_learning_rate}"
        )


BLOCK = config_checks.Block(
    "dmtg",
    default_config,
    {
        "num_groups": config_checks.POSITIVE,
        "tau_schedule": config_checks.Choice(TAU_SCHEDULES),
        "tau": config_checks.number(0, low_open=True),
        "tau_start": config_checks.number(0, low_open=True),
        "tau_end": config_checks.number(0, low_open=True),
        "hard": config_checks.BOOL,
        "entropy_weight": config_checks.number(),
        "shared_stem": config_checks.Choice(SHARED_STEMS),
        "branch_strategy": config_checks.Choice(stacking.STRATEGIES),
        "finetune_epochs": config_checks.NON_NEGATIVE,
        "warmup_steps": config_checks.NON_NEGATIVE,
        "logits_optimizer": config_checks.Choice(LOGITS_OPTIMIZERS),
        "logits_learning_rate": config_checks.number(0),
        "balance_weight": config_checks.number(0),
        "num_samples": config_checks.POSITIVE,
        "probe_heads": config_checks.BOOL,
        "logits_init_noise": config_checks.number(0),
        "lookahead_weight": config_checks.number(0),
        "lookahead_step": config_checks.number(0, 1, low_open=True, high_open=True),
        "lookahead_subsample": config_checks.POSITIVE,
        "confidence.num_samples": config_checks.NON_NEGATIVE,
        "confidence.epochs": config_checks.NON_NEGATIVE,
        "confidence.seed": config_checks.SEED,
    },
    rules=(
        finetune_before_the_end,
        lookahead_subsample_divides_the_batch,
        own_logits_optimizer_needs_a_rate,
    ),
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
