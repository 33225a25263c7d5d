"""Valid values of the config keys, checked before any data is read or file written.

`VALID` is the table: dotted key -> (what a valid value is, predicate). Keys a
config lacks are skipped (a method's own block may be absent from old configs);
choices among names (method, optimizer, strategies) and rules that tie keys
together are checked by tag_jax.train.validate_config and the methods'
validators. `check_groups_file` reads a groups.json given to the 'groups'
method and checks its shape.
"""

import json
import math
import numbers
import os

from tag_jax.errors import UserError


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(low=None, high=None):
    """(text, predicate) of an integer in [low, high] (None: unbounded)."""
    if low is not None and high is not None:
        text = f"in [{low}, {high}] (an integer)"
    else:
        text = f">= {low} (an integer)" if low is not None else "an integer"
    return text, lambda v: _integer(v) and (low is None or v >= low) and (high is None or v <= high)


def number(low=None, high=None, *, low_open=False, high_open=False):
    """(text, predicate) of a finite number in the interval (open or closed ends)."""
    if low is not None and high is not None:
        text = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'} (a number)"
    elif low is not None:
        text = f"{'>' if low_open else '>='} {low} (a finite number)"
    else:
        text = "a finite number"

    def ok(v):
        if not _number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)

    return text, ok


def _distinct_names(v) -> bool:
    return (
        isinstance(v, (tuple, list))
        and all(isinstance(t, str) and t for t in v)
        and len(set(v)) == len(v)
    )


def _ks(v) -> bool:
    return isinstance(v, (tuple, list)) and bool(v) and all(_integer(k) and k >= 1 for k in v)


def _task_groups(v) -> bool:
    return isinstance(v, (tuple, list)) and all(
        isinstance(g, (tuple, list)) and g and all(isinstance(t, str) for t in g) for g in v
    )


BOOL = ("True or False", lambda v: isinstance(v, bool))
POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
SEED = integer(0, 2**32 - 1)

VALID = {
    "seed": SEED,
    "tasks": ("distinct non-empty task names", _distinct_names),
    "dataset.path": ("a path (text)", lambda v: isinstance(v, str)),
    "dataset.data_dir": ("a path (text)", lambda v: isinstance(v, str)),
    "dataset.num_train": POSITIVE,
    "dataset.num_validation": POSITIVE,
    "dataset.num_test": POSITIVE,
    "dataset.group_sizes": ("a non-empty tuple of group sizes >= 1", _ks),
    "dataset.noise": number(0),
    "dataset.task_noise": number(0),
    "dataset.label_noise": number(0, 1),
    "dataset.data_seed": SEED,
    "dataset.num_workers": POSITIVE,
    "dataset.cache_dir": (
        "a path (text), '' (next to the TFDS data) or 'none'",
        lambda v: isinstance(v, str),
    ),
    "image_size": integer(5, 4096),  # the trunk needs 5x5 pixels (tag_jax.models.MIN_IMAGE_SIZE)
    "model.width": integer(1, 4096),
    "model.bn_epsilon": number(0, low_open=True),
    "model.bn_momentum": number(0, 1, high_open=True),
    "model.num_classes": integer(2),
    "batch_size": POSITIVE,
    "eval_batch_size": POSITIVE,
    "drop_remainder": BOOL,
    "prefetch_batches": NON_NEGATIVE,
    "num_epochs": POSITIVE,
    "min_train_steps": NON_NEGATIVE,
    "max_steps": (
        "-1 (no limit) or an integer >= 1",
        lambda v: _integer(v) and (v == -1 or v >= 1),
    ),
    "optimizer.learning_rate": number(0, low_open=True),
    "optimizer.momentum": number(0, 1, high_open=True),
    "optimizer.weight_decay": number(0),
    "optimizer.decay_every_epochs": number(0, low_open=True),
    "optimizer.decay_factor": number(0, 1, low_open=True),
    "optimizer.warmup_steps": NON_NEGATIVE,
    "early_stopping.patience": NON_NEGATIVE,
    "early_stopping.restore_best": BOOL,
    "early_stopping.min_steps": NON_NEGATIVE,
    "affinity.every_n_steps": POSITIVE,
    "affinity.momentum": number(),
    "affinity.weight_decay": number(0),
    "affinity.scale_by_lr": BOOL,
    "affinity.chunk_size": NON_NEGATIVE,
    "affinity.kernels_only": BOOL,
    "selection.max_groups": ("a non-empty tuple of k values >= 1", _ks),
    "selection.time_limit": number(0, low_open=True),
    "baselines.gradnorm_alpha": number(0),
    "baselines.pcgrad_uncertainty": BOOL,
    "groups.groups": ("a tuple of non-empty tuples of task names", _task_groups),
    "groups.groups_file": ("a path (text)", lambda v: isinstance(v, str)),
    "groups.max_groups": NON_NEGATIVE,
    "groups.num_random_groups": POSITIVE,
    "groups.random_seed": SEED,
    "groups.seeds": POSITIVE,
    "dmtg.num_groups": POSITIVE,
    "dmtg.tau": number(0, low_open=True),
    "dmtg.tau_start": number(0, low_open=True),
    "dmtg.tau_end": number(0, low_open=True),
    "dmtg.hard": BOOL,
    "dmtg.entropy_weight": number(),
    "dmtg.finetune_epochs": NON_NEGATIVE,
    "mesh.data": (
        "-1 (all devices) or an integer >= 1",
        lambda v: _integer(v) and (v == -1 or v >= 1),
    ),
    "mesh.networks": POSITIVE,
    "log_every_steps": POSITIVE,
    "checkpoint_every_steps": NON_NEGATIVE,
    "keep_checkpoints": POSITIVE,
    "study.max_groups": ("a non-empty tuple of k values >= 1", _ks),
    "study.epochs_search": NON_NEGATIVE,
    "study.epochs_train": NON_NEGATIVE,
    "study.seeds": POSITIVE,
}


def lookup(config, key: str):
    """(found, value) of a dotted key."""
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False, None
    return True, node


def check_values(config) -> None:
    """UserError naming the first key whose value is outside VALID."""
    for key, (text, ok) in VALID.items():
        found, value = lookup(config, key)
        if found and not ok(value):
            raise UserError(f"config.{key} must be {text}, got {value!r}")


def check_groups_file(path: str, max_groups: int) -> None:
    """UserError unless path is a groups.json with a selection for k = max_groups (0: its only one):
    {"selections": [{"max_groups": k, "groups": [[task, ...], ...], "assignment"?: {...}}]}."""
    fix = "give a groups.json written by a tag, cs, pairs or dmtg run"
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not JSON"
        raise UserError(
            f"config.groups.groups_file {path!r} is unreadable ({reason}); {fix}"
        ) from e
    selections = record.get("selections") if isinstance(record, dict) else None
    if (
        not isinstance(selections, list)
        or not selections
        or not all(
            isinstance(s, dict)
            and _integer(s.get("max_groups"))
            and _task_groups(s.get("groups"))
            and s["groups"]
            and isinstance(s.get("assignment", {}), dict)
            for s in selections
        )
    ):
        raise UserError(
            f"config.groups.groups_file {path!r} is not a groups.json (it needs "
            "'selections': a list of {'max_groups': k, 'groups': [[task, ...], ...]}); "
            f"{fix}"
        )
    available = [s["max_groups"] for s in selections]
    if not (max_groups in available or (max_groups == 0 and len(selections) == 1)):
        raise UserError(
            f"{path} has selections for k in {available}; set config.groups.max_groups "
            "to one of them"
        )
    for s in selections:
        for task, group in s.get("assignment", {}).items():
            if not (isinstance(group, list) and group in s["groups"]):
                raise UserError(
                    f"config.groups.groups_file {path!r}: task {task!r} is assigned to "
                    f"{group!r}, which is not one of the selection's groups; {fix}"
                )


def check_workdir_path(workdir: str, flag: str = "--workdir") -> None:
    """UserError when files under workdir would exceed the system's path length."""
    path = os.path.abspath(workdir)
    try:
        limit = os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = 4096
    needed = len(path.encode()) + 160  # checkpoints/<step>.orbax-checkpoint-tmp-<n>/state/...
    if needed > limit:
        raise UserError(
            f"{flag} path is {len(path)} characters long; files under it would exceed "
            f"the {limit}-character limit: use a shorter path"
        )
    for part in path.split(os.sep):
        if len(part.encode()) > 255:
            raise UserError(
                f"{flag} has a folder name of {len(part)} characters (at most 255): use a "
                "shorter name"
            )
