"""'groups', 'pairs', 'random': one network per task group, all trained in ONE run.

Every network is the usual `models.MultiTaskNet` (trunk + heads for all T
tasks). Their parameters are stacked on a leading network axis (G, ...) and all
start from the same initialisation (config.seed), so network g trains exactly
as a run of group g alone would: its loss is the sum of its MEMBER tasks'
losses (masks (G, T)); networks share no parameter, so one gradient of the sum
over networks is every network's own gradient. Which networks:
- 'groups': `config.groups.groups` (task-name lists), or the selection with
  k = `config.groups.max_groups` of the groups.json `config.groups.groups_file`
  (TAG, CS, HOA or DMTG; 0 = its only selection).
- 'random': a seeded random split of the tasks into
  `config.groups.num_random_groups` non-empty groups (`random_partition`).
- 'pairs' (HOA, Standley et al.): the T single-task networks, then every pair.
  A single-task network here is the same network as a pair's (not the
  half-size, cost-0.5 network of Standley's setting).

Serving: each task is evaluated on ONE network: the one groups.json assigns it
to, else the first listed network containing it (for 'pairs': its single-task
network). The eval_step returns every network's sums (G, T); the loop reports
each task on its serving network and stops early per network, as separate runs
would (tag_jax.methods.base): a network whose members' summed validation loss
has not improved for config.early_stopping.patience epochs keeps its best
parameters (it still trains, unused); the run stops when every network has.

Seeds (`config.groups.seeds` = S, 'groups' and 'random'): the networks are
trained S times side by side, copy s as the run with seed config.seed + s would
train them (its initialisation, its data order: the loop hands one batch per
seed); results.json reports each copy in 'seed_results' (tag_jax.methods.base).

Forwards of the G networks: `config.groups.network_strategy` 'vmap',
'unrolled' or 'auto' (tag_jax.stacking.resolve), the same numbers either way.
With config.mesh.networks > 1 the network axis of every state array is split
over the 'networks' mesh axis.

Outputs: `groups_trained.json` ({method, tasks, groups, serving {task: group},
network_best_epoch}); 'pairs' also `pairs.json` (the pairwise table of
validation/test loss and error % in the selection package's orientation,
scores[t][u] = value of t in the network trained on {t, u}, diagonal = t
alone) and `groups.json` (HOA selection for each k of
config.selection.max_groups, minimising the validation `config.groups.hoa_score`, with each
grouping's confidence from a bootstrap over the validation examples: tag_jax.methods.hoa).

This module holds the config, its checks, the builders and which networks serve which tasks;
the stacked networks and their step are in `stacked_networks`, HOA's outputs in `hoa`.
"""

import functools
import itertools
import json
import os

import ml_collections
import numpy as np

from tag_jax import config_checks, models, optim, reporting, stacking, steps
from tag_jax.errors import UserError
from tag_jax.methods import hoa
from tag_jax.methods.base import Method
from tag_jax.methods.stacked_networks import StackedNets, make_groups_step, network_axis_sharding

HOA_SCORES = ("loss", "error")


def default_config() -> ml_collections.ConfigDict:
    """config.groups: which networks 'groups', 'pairs' and 'random' train."""
    cfg = ml_collections.ConfigDict()
    cfg.groups = ()  # 'groups': tuple of task-name tuples, or else groups_file:
    cfg.groups_file = ""  # 'groups': a groups.json (TAG, CS, HOA, DMTG) ...
    cfg.max_groups = 0  # ... and its selection with this k; 0 = its only selection
    cfg.num_random_groups = 3  # 'random': k non-empty groups
    cfg.random_seed = 0  # 'random': seed of the partition
    cfg.hoa_score = "loss"  # 'pairs': HOA selects on validation 'loss' or 'error'
    cfg.network_strategy = "auto"  # 'vmap' | 'unrolled' | 'auto' (tag_jax/stacking.py)
    # 'groups', 'random': train the networks for seeds config.seed + 0..seeds-1 side by side, each
    # copy as its own run would (own initialisation and data order; results.json 'seed_results').
    cfg.seeds = 1
    # 'pairs': how sure each HOA grouping is, from a bootstrap over the validation examples
    # behind every pair's score (tag_jax/methods/hoa.py).
    cfg.confidence = hoa.confidence_config()
    return cfg


BLOCK = config_checks.Block(
    "groups",
    default_config,
    {
        "groups": config_checks.TASK_GROUPS,
        "groups_file": config_checks.PATH,
        "max_groups": config_checks.NON_NEGATIVE,
        "num_random_groups": config_checks.POSITIVE,
        "random_seed": config_checks.SEED,
        "hoa_score": config_checks.Choice(HOA_SCORES),
        "network_strategy": config_checks.Choice(stacking.STRATEGIES),
        "seeds": config_checks.POSITIVE,
        "confidence.num_resamples": config_checks.NON_NEGATIVE,
        "confidence.seed": config_checks.SEED,
        "confidence.time_budget": config_checks.number(0, low_open=True),
    },
)


def one_source_of_groups(config) -> None:
    """'groups' takes its groups from exactly one of groups.groups and a readable groups_file."""
    cfg = config.groups
    if bool(cfg.groups) == bool(cfg.groups_file):
        raise UserError(
            "config.method='groups' needs exactly one of config.groups.groups (task-name "
            "lists) and config.groups.groups_file (a groups.json)"
        )
    if cfg.groups_file and not os.path.isfile(cfg.groups_file):
        raise UserError(f"config.groups.groups_file {cfg.groups_file!r} does not exist")
    if cfg.groups_file:  # its shape and the selection k, before any data is read
        config_checks.check_groups_file(cfg.groups_file, cfg.max_groups)


def pairs_train_one_seed(config) -> None:
    if config.groups.seeds != 1:
        raise UserError(
            f"config.groups.seeds={config.groups.seeds} is for 'groups' and 'random'; "
            "'pairs' trains one seed (run it once per seed)"
        )


def build_groups(config, task_names, image_shape, steps_per_epoch) -> Method:
    cfg = config.groups
    assignment = None
    if cfg.groups_file:
        networks, assignment = load_selection(cfg.groups_file, cfg.max_groups)
    else:
        networks = [list(g) for g in cfg.groups]
    return stacked_networks_method(
        "groups", config, task_names, image_shape, steps_per_epoch, networks, assignment
    )


def build_random(config, task_names, image_shape, steps_per_epoch) -> Method:
    networks = random_partition(
        task_names, config.groups.num_random_groups, config.groups.random_seed
    )
    return stacked_networks_method(
        "random", config, task_names, image_shape, steps_per_epoch, networks
    )


def build_pairs(config, task_names, image_shape, steps_per_epoch) -> Method:
    networks = pair_networks(task_names)
    outputs = functools.partial(
        hoa.write_pairs_outputs,
        networks=networks,
        score=f"validation_{config.groups.hoa_score}",
        max_groups=tuple(config.selection.max_groups),
        time_limit=config.selection.time_limit,
        confidence_config=config.groups.confidence,
    )
    return stacked_networks_method(
        "pairs", config, task_names, image_shape, steps_per_epoch, networks, extra_outputs=outputs
    )


def stacked_networks_method(
    name,
    config,
    task_names,
    image_shape,
    steps_per_epoch,
    networks,
    assignment=None,
    extra_outputs=None,
) -> Method:
    """One MultiTaskNet per network, stacked and trained in one run (config.groups.seeds copies of
    them, seed-major); outputs groups_trained.json (and extra_outputs(ctx, final, nets) -> dict,
    nets: the StackedNets)."""
    check_groups(networks, task_names)
    serving = serving_networks(networks, task_names, assignment)
    seeds = config.groups.seeds
    masks = np.tile(membership_masks(networks, task_names), (seeds, 1))
    model = models.create_model(config, len(task_names))
    nets = StackedNets(
        model,
        len(masks),
        stacking.resolve(config.groups.network_strategy, len(masks), differentiated=True),
        copy_seeds=tuple(config.seed + s for s in range(1, seeds)),
    )
    optimizer = optim.create_optimizer(config, steps_per_epoch)

    def init_state(rng):
        return steps.init_train_state(nets, optimizer, rng, image_shape)

    def finish(ctx, state, record, final):
        del state, record
        summary = write_groups_trained(
            ctx.workdir, name, task_names, networks, serving, final.best_epoch
        )
        if extra_outputs:
            summary.update(extra_outputs(ctx, final, nets))
        return summary

    return Method(
        init_state=init_state,
        train_step=make_groups_step(nets, optimizer, masks),
        eval_step=nets.eval_sums,
        members=masks,
        serving=serving,
        stacked=True,
        trunk_passes=(len(masks), len(masks)),
        finish=finish,
        state_sharding=functools.partial(network_axis_sharding, init_state, len(masks)),
        seeds=seeds,
    )


# --- which networks, which tasks they serve ---


def pair_networks(task_names) -> list:
    """HOA's networks: [t] for every task, then [t, u] for every pair t < u (T + T(T-1)/2)."""
    return [[t] for t in task_names] + [list(p) for p in itertools.combinations(task_names, 2)]


def random_partition(task_names, num_groups: int, seed: int) -> list:
    """A seeded random split into `num_groups` non-empty groups (task order, by first task).

    np.random.default_rng(seed) permutes the tasks; the first k of the permutation
    open one group each, every other task joins a group drawn uniformly.
    """
    num_tasks = len(task_names)
    if not 1 <= num_groups <= num_tasks:
        raise UserError(
            f"config.groups.num_random_groups {num_groups} must be in [1, {num_tasks}] "
            f"for {num_tasks} tasks"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_tasks)
    group_of = np.empty(num_tasks, int)
    group_of[order[:num_groups]] = np.arange(num_groups)
    group_of[order[num_groups:]] = rng.integers(0, num_groups, num_tasks - num_groups)
    groups = [[t for t, g in zip(task_names, group_of) if g == k] for k in range(num_groups)]
    return sorted(groups, key=lambda g: list(task_names).index(g[0]))


def load_selection(path: str, max_groups: int) -> tuple[list, dict]:
    """(groups, assignment {task: serving group}) of groups.json's selection with k = max_groups.

    max_groups 0 takes the file's only selection.
    """
    try:
        with open(path) as f:
            selections = json.load(f)["selections"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"config.groups.groups_file {path!r} is not a readable groups.json ({e})"
        ) from e
    available = [s["max_groups"] for s in selections]
    if max_groups == 0 and len(selections) == 1:
        chosen = selections[0]
    elif max_groups in available:
        chosen = selections[available.index(max_groups)]
    else:
        raise UserError(
            f"{path} has selections for k in {available}; set config.groups.max_groups "
            "to one of them"
        )
    return [list(g) for g in chosen["groups"]], chosen.get("assignment")


def check_groups(networks, task_names) -> None:
    """UserError for an empty group, an unknown or repeated task name, or a task in no group."""
    for group in networks:
        unknown = [t for t in group if t not in task_names]
        if not group or unknown or len(set(group)) != len(group):
            raise UserError(
                f"group {list(group)} must be non-empty, without repeats, of tasks in "
                f"{list(task_names)}"
            )
    uncovered = [t for t in task_names if not any(t in g for g in networks)]
    if uncovered:
        raise UserError(
            f"task(s) {uncovered} are in no group; add them to a group or restrict config.tasks"
        )


def serving_networks(networks, task_names, assignment=None) -> np.ndarray:
    """(T,) index of the network serving each task: assignment[t] if given, else the first
    network containing t."""
    if assignment:
        return np.array([networks.index(list(assignment[t])) for t in task_names])
    return np.array(
        [next(g for g, members in enumerate(networks) if t in members) for t in task_names]
    )


def membership_masks(networks, task_names) -> np.ndarray:
    """(G, T) float32: 1 where task t is a member of network g."""
    return np.array([[t in members for t in task_names] for members in networks], np.float32)


# --- outputs ---


def write_groups_trained(workdir, method, task_names, networks, serving, best_epoch) -> dict:
    record = {
        "method": method,
        "tasks": list(task_names),
        "groups": networks,
        "serving": {t: networks[g] for t, g in zip(task_names, serving)},
        "network_best_epoch": list(best_epoch),
    }
    reporting.write_json_atomic(os.path.join(workdir, "groups_trained.json"), record)
    return {"networks": networks}
