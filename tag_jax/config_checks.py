"""What a valid config is, and the one checker that walks it.

Each config block declares its schema next to the function that makes its defaults: a `Block`
names the block (`config.<name>`; '' = the top-level keys), what a valid value of each of its
keys is (`Valid`, made with `integer`, `number`, `choice`, ...) and its cross-key rules (small
named functions of the whole config that raise UserError). The common blocks (top-level keys,
dataset, model, optimizer, early stopping, study, mesh) are in tag_jax.default_config; each
method's block is in its module, and its registry entry (tag_jax.methods) names the blocks the
method reads and its own rules. `check` walks them before any data is read or file written.

Besides, `check_groups_file` reads a groups.json given to the 'groups' method and checks its
shape, and `check_workdir_path` the length of a workdir's paths.
"""

import dataclasses
import json
import math
import numbers
import os
from typing import Callable, Collection, Optional

from tag_jax.errors import UserError


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Valid:
    """A valid value of one key: `ok(value)` holds; `text` says what it is ('>= 1 (an integer)')."""

    text: str
    ok: Callable[[object], bool]

    def message(self, key: str, value) -> str:
        return f"config.{key} must be {self.text}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class Choice:
    """A name among `options` (a tuple, or a dict whose keys are the names, read when checked)."""

    options: Collection[str]

    @property
    def text(self) -> str:
        return f"one of {tuple(self.options)}"

    def ok(self, value) -> bool:
        return isinstance(value, str) and value in self.options

    def message(self, key: str, value) -> str:
        return f"unknown config.{key} {value!r}; choose {self.text}"


def integer(low=None, high=None) -> Valid:
    """An integer in [low, high] (None: unbounded)."""
    if low is not None and high is not None:
        text = f"in [{low}, {high}] (an integer)"
    else:
        text = f">= {low} (an integer)" if low is not None else "an integer"
    return Valid(
        text,
        lambda v: _integer(v) and (low is None or v >= low) and (high is None or v <= high),
    )


def number(low=None, high=None, *, low_open=False, high_open=False) -> Valid:
    """A finite number in the interval from low to high (None: unbounded; open or closed ends)."""
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

    return Valid(text, ok)


def _distinct_names(v) -> bool:
    return (
        isinstance(v, (tuple, list))
        and all(isinstance(t, str) and t for t in v)
        and len(set(v)) == len(v)
    )


def _positive_integers(v) -> bool:
    return isinstance(v, (tuple, list)) and bool(v) and all(_integer(k) and k >= 1 for k in v)


def _task_groups(v) -> bool:
    return isinstance(v, (tuple, list)) and all(
        isinstance(g, (tuple, list)) and g and all(isinstance(t, str) for t in g) for g in v
    )


BOOL = Valid("True or False", lambda v: isinstance(v, bool))
PATH = Valid("a path (text)", lambda v: isinstance(v, str))
POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
SEED = integer(0, 2**32 - 1)
TASK_NAMES = Valid("distinct non-empty task names", _distinct_names)
TASK_GROUPS = Valid("a tuple of non-empty tuples of task names", _task_groups)
KS = Valid("a non-empty tuple of k values >= 1", _positive_integers)
GROUP_SIZES = Valid("a non-empty tuple of group sizes >= 1", _positive_integers)


def minus_one_or_positive(meaning: str) -> Valid:
    """-1 (which means `meaning`) or an integer >= 1."""
    return Valid(
        f"-1 ({meaning}) or an integer >= 1", lambda v: _integer(v) and (v == -1 or v >= 1)
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Block:
    """The schema of config.<name> ('' = the top-level keys).

    defaults() makes the block (None for the top-level keys, set in
    tag_jax.default_config.get_base_config); values: {key in the block: Valid or Choice};
    rules: functions rule(config) -> None that raise UserError when keys disagree with each
    other (run after every block's values are valid).
    """

    name: str
    defaults: Optional[Callable]
    values: dict
    rules: tuple = ()

    def dotted(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key


def lookup(config, key: str):
    """(found, value) of a dotted key."""
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False, None
    return True, node


def check(config, blocks, rules=()) -> None:
    """UserError naming the first key of `blocks` whose value is not valid, else the first broken
    rule: the blocks' rules, then `rules`. Keys a config lacks are skipped (an old config may
    lack a block)."""
    for block in blocks:
        for key, valid in block.values.items():
            dotted = block.dotted(key)
            found, value = lookup(config, dotted)
            if found and not valid.ok(value):
                raise UserError(valid.message(dotted, value))
    for rule in [rule for block in blocks for rule in block.rules] + list(rules):
        rule(config)


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
