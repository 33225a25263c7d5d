"""Training methods behind `config.method`, and the registry the loop builds them from.

Each entry names a builder `build(config, task_names, image_shape,
steps_per_epoch) -> Method` (tag_jax.methods.base), a `validate(config)` that
raises UserError before any data is read, and the settings whose 'auto' is decided
by timing (tag_jax.autotune; `model.conv` is tuned for every method). Builders read their config values and
pass them down as plain arguments; nothing outside this registry compares
config.method. Adding a method is one module and one line here
(docs/adding_a_method.md). Config blocks owned by methods are listed in
CONFIG_BLOCKS and assembled into the base config by tag_jax.default_config.
"""

import dataclasses
from typing import Callable

from tag_jax import autotune, grouping, models
from tag_jax.errors import UserError
from tag_jax.methods import affinity_methods, baselines, dmtg, groups, mtl
from tag_jax.methods.base import Method


def _no_settings(config) -> None:
    del config


@dataclasses.dataclass(frozen=True)
class Registered:
    build: Callable
    validate: Callable = _no_settings
    tuned: tuple = ()  # autotune.Tunable settings of this method, after model.conv


REGISTRY = {
    "mtl": Registered(mtl.build),
    "tag": Registered(
        affinity_methods.build_tag, affinity_methods.validate_tag, (affinity_methods.TAG_STRATEGY,)
    ),
    "cs": Registered(
        affinity_methods.build_cs, affinity_methods.validate_cs, (affinity_methods.CS_STRATEGY,)
    ),
    "uw": Registered(baselines.build_uw, baselines.validate),
    "gradnorm": Registered(baselines.build_gradnorm, baselines.validate),
    "pcgrad": Registered(baselines.build_pcgrad, baselines.validate),
    "dmtg": Registered(dmtg.build, dmtg.validate, (dmtg.BRANCH_STRATEGY,)),
    "groups": Registered(groups.build_groups, groups.validate_groups),
    "pairs": Registered(groups.build_pairs, groups.validate_pairs),
    "random": Registered(groups.build_random, groups.validate_random),
}
METHODS = tuple(REGISTRY)

# config.<key> blocks and the functions that make their defaults.
CONFIG_BLOCKS = {
    "affinity": affinity_methods.default_config,
    "selection": grouping.default_config,
    "baselines": baselines.default_config,
    "groups": groups.default_config,
    "dmtg": dmtg.default_config,
}


def _registered(name: str) -> Registered:
    if name not in REGISTRY:
        raise UserError(f"unknown config.method {name!r}; choose one of {METHODS}")
    return REGISTRY[name]


def validate(config) -> None:
    _registered(config.method).validate(config)


def build(config, task_names, image_shape, steps_per_epoch: int) -> Method:
    """The method of config.method, its 'auto' settings decided (tag_jax.autotune) and recorded
    in Method.autotune."""
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
