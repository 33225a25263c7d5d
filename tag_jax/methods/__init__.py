"""Training methods behind `config.method`, and the registry the loop builds them from.

Each entry names a builder `build(config, task_names, image_shape,
steps_per_epoch) -> Method` (tag_jax.methods.base), the config blocks the method reads
(`config_checks.Block`: defaults and schema, next to each other in the method's module; the
base config holds every registered block), the method's own cross-key rules, and the settings
whose 'auto' is decided by timing (tag_jax.autotune; `model.conv` is tuned for every method).
Builders read their config values and pass them down as plain arguments; nothing outside this
registry compares config.method. Adding a method, settings included, is one module and one line
here (docs/adding_a_method.md).
"""

import dataclasses
from typing import Callable

from tag_jax import autotune, config_checks, grouping, models
from tag_jax.errors import UserError
from tag_jax.methods import affinity_methods, baselines, dmtg, groups, mtl
from tag_jax.methods.base import Method


@dataclasses.dataclass(frozen=True)
class Registered:
    build: Callable
    blocks: tuple = ()  # config_checks.Block of every config block the method reads
    rules: tuple = ()  # the method's own cross-key rules: rule(config) raises UserError
    tuned: tuple = ()  # autotune.Tunable settings of this method, after model.conv
    min_tasks: int = 1  # tasks it needs: a grouping method chooses among at least two


AFFINITY = (affinity_methods.BLOCK, grouping.BLOCK)
REGISTRY = {
    "mtl": Registered(mtl.build),
    "tag": Registered(
        affinity_methods.build_tag,
        AFFINITY,
        (affinity_methods.momentum_lookahead_needs_sgd, affinity_methods.stopping_needs_confidence),
        (affinity_methods.TAG_STRATEGY,),
        min_tasks=2,
    ),
    "cs": Registered(
        affinity_methods.build_cs,
        AFFINITY,
        (affinity_methods.stopping_needs_confidence,),
        (affinity_methods.CS_STRATEGY,),
        min_tasks=2,
    ),
    "uw": Registered(baselines.build_uw, (baselines.BLOCK,)),
    "gradnorm": Registered(baselines.build_gradnorm, (baselines.BLOCK,)),
    "pcgrad": Registered(baselines.build_pcgrad, (baselines.BLOCK,)),
    "dmtg": Registered(dmtg.build, (dmtg.BLOCK,), tuned=(dmtg.BRANCH_STRATEGY,), min_tasks=2),
    "groups": Registered(groups.build_groups, (groups.BLOCK,), (groups.one_source_of_groups,)),
    "pairs": Registered(
        groups.build_pairs,
        (groups.BLOCK, grouping.BLOCK),
        (groups.pairs_train_one_seed,),
        min_tasks=2,
    ),
    "random": Registered(groups.build_random, (groups.BLOCK,), min_tasks=2),
}
METHODS = tuple(REGISTRY)


def config_blocks() -> tuple:
    """The config blocks of every registered method, each once, in registry order."""
    return tuple(dict.fromkeys(b for entry in REGISTRY.values() for b in entry.blocks))


def _registered(name: str) -> Registered:
    if name not in REGISTRY:
        raise UserError(f"unknown config.method {name!r}; choose one of {tuple(REGISTRY)}")
    return REGISTRY[name]


def validate(config) -> None:
    """UserError for a value of the method's blocks that is not valid, or a broken rule of the
    blocks or the method (tag_jax.config_checks)."""
    registered = _registered(config.method)
    config_checks.check(config, registered.blocks, registered.rules)


def check_task_count(config, task_names) -> None:
    """UserError when the data gives fewer tasks than config.method needs (a grouping method
    chooses among at least two): known once the data is read, checked before anything is built."""
    needed = _registered(config.method).min_tasks
    if len(task_names) < needed:
        raise UserError(
            f"config.method={config.method!r} groups tasks and needs at least {needed}; the data "
            f"gives {len(task_names)} ({', '.join(task_names)}): give more tasks (config.tasks, "
            "or the dataset's), or train them with config.method='mtl'"
        )


def build(config, task_names, image_shape, steps_per_epoch: int) -> Method:
    """The method of config.method (UserError for too few tasks: check_task_count), its 'auto'
    settings decided (tag_jax.autotune) and recorded in Method.autotune."""
    check_task_count(config, task_names)
    registered = _registered(config.method)

    def build_with(tuned_config):
        method = registered.build(tuned_config, task_names, image_shape, steps_per_epoch)
        return dataclasses.replace(
            method, compiler_options=models.compiler_options(tuned_config.model.conv)
        )

    config, decisions = autotune.resolve(
        config, build_with, len(task_names), image_shape, (autotune.CONV,) + registered.tuned
    )
    return dataclasses.replace(build_with(config), autotune=decisions)
