"""'auto' settings decided by timing their candidates on the run's own shapes and backend.

`resolve` replaces every 'auto' among a method's tunable settings (`model.conv` for all
methods, plus what the method registers: `affinity.strategy` for TAG/CS,
`dmtg.branch_strategy` for DMTG) by the candidate whose step was fastest: each
candidate's step (the method's own, built as the run builds it; for `model.conv` the run's
mix of train and measured steps, weighted by how often each runs: `step_timing.step_mix`) is
compiled and run TIMED_STEPS times on random data of the run's shapes (per-device batch, image
shape, tasks, dtype) on one device (tag_jax.step_timing); its time is the median of the steps
after the first (a candidate far slower than the best so far is not stepped further: GIVE_UP,
GIVE_UP_FIRST; nor one whose steps took CANDIDATE_SECONDS, from its second step on). A candidate
whose compiled step needs more scratch memory than the device has free is skipped, not run.

What is timed, how long it may take and each candidate's time are logged as it goes (for a
decision made inside another's candidates, TAG's strategy inside each convolution, only at
--verbosity=1: the console gets its decisions). All the timing of one run shares one budget,
config.autotune_budget_seconds: no candidate is started once it is spent, or when the
candidates timed before took longer on average than what is left (the step being run when it
runs out finishes), and the setting takes the best candidate timed so far, or, when none was,
stays 'auto' for its fixed rule; the log says so.
The times and the choice are returned as a JSON-able record (`Method.autotune`, for
results.json), and the decision is cached (tag_jax.autotune_cache), so later runs skip the
timing; a decision the budget cut short is timed again by a run with a larger budget.

Explicit values always win and are never timed. With TAG_JAX_AUTOTUNE=rule nothing is
timed: 'auto' stays and is resolved by the fixed rules of `models.resolve_conv_impl` and
`stacking.resolve` (the test suite runs this way).
"""

import copy
import dataclasses
import datetime
import functools
import os
import time
from typing import Callable, Optional, Sequence

from absl import logging

from tag_jax import autotune_cache, interrupts, models, step_timing

MODE_ENV = "TAG_JAX_AUTOTUNE"  # 'time' (default) | 'rule'
MODES = ("time", "rule")
TIMED_STEPS = 4  # per candidate, after compiling; its time is the median of all but the first
GIVE_UP = 3.0  # a candidate stops being timed when a step (after its first) is this x the best
GIVE_UP_FIRST = 10.0  # ... or when its first step (warm-up included) is this x the best
CANDIDATE_SECONDS = 20.0  # a candidate's steps stop once they took this long (after 2 steps)
BUDGET_KEY = "config.autotune_budget_seconds"


@dataclasses.dataclass(frozen=True)
class Tunable:
    """A config setting whose 'auto' is decided by timing.

    candidates(config, num_tasks) -> the values to time (config has the settings tuned before
    this one already decided). step: which step of the built method is timed ('train',
    'measured', or 'mix': the steps a run takes, weighted by how often it takes them, see
    step_timing.step_mix). key_paths: config values, besides the shapes every key holds, that
    shape the step.
    """

    path: str
    candidates: Callable
    step: str = "train"
    key_paths: tuple = ()


CONV = Tunable("model.conv", lambda config, num_tasks: models.conv_candidates(), step="mix")
# How often a measured step runs: part of a 'mix' decision's key.
MIX_KEY_PATHS = ("affinity.every_n_steps",)


class NothingFits(step_timing.TooLarge, RuntimeError):
    """No candidate of a setting fits in memory (for a 'mix' candidate: it is skipped)."""


@dataclasses.dataclass
class Budget:
    """The seconds all the timing of one resolve may take (config.autotune_budget_seconds),
    counted from its creation on `clock` (seconds)."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    start: Optional[float] = None

    def __post_init__(self):
        if self.start is None:
            self.start = self.clock()

    def used(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return max(self.seconds - self.used(), 0.0)

    def spent(self) -> bool:
        return self.used() >= self.seconds


def mode() -> str:
    value = os.environ.get(MODE_ENV, "time") or "time"
    if value not in MODES:
        raise ValueError(f"{MODE_ENV} must be one of {MODES}, got {value!r}")
    return value


def get(config, path: str):
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def with_value(config, path: str, value):
    """A copy of `config` with `path` set to `value`."""
    result = copy.deepcopy(config)
    *parents, leaf = path.split(".")
    node = result
    for part in parents:
        node = node[part]
    node[leaf] = value
    return result


def reusable(cached: Optional[dict], candidates: Sequence[str], budget: Budget) -> bool:
    """Whether a cached decision stands: one of these candidates, and either complete or cut
    short by a budget at least as large as this run's."""
    return (
        bool(cached)
        and cached.get("choice") in candidates
        and (not cached.get("untimed") or budget.seconds <= cached.get("budget_seconds", 0))
    )


def time_candidates(
    setting: str, candidates: Sequence[str], timer: Callable, budget: Budget, log=logging.info
):
    """({candidate: ms per step}, {candidate: why skipped}, [candidates not timed]) of
    timer(candidate) -> step seconds, consumed one by one: a candidate whose first step is
    GIVE_UP_FIRST times, or a later step GIVE_UP times, slower than the best so far is not timed
    further, nor one whose steps took CANDIDATE_SECONDS (from its second step on), nor one
    running when the budget is spent; no candidate starts once it is spent or when the ones
    before took longer on average than the budget has left. Logs (`log`) each time and how long
    the rest may take."""
    times, skipped, spent_on = {}, {}, []
    for index, candidate in enumerate(candidates):
        interrupts.raise_if_received()  # a Ctrl-C swallowed while JAX imported
        expected = sum(spent_on) / len(spent_on) if spent_on else 0.0
        if budget.spent() or expected > budget.left():
            return times, skipped, list(candidates[index:])
        began = budget.used()
        try:
            seconds = []
            for step_seconds in timer(candidate):
                seconds.append(step_seconds)
                limit = GIVE_UP if len(seconds) > 1 else GIVE_UP_FIRST
                if times and 1e3 * step_seconds > limit * min(times.values()):
                    break  # hopeless: the rest of its steps would only cost time
                if len(seconds) >= 2 and sum(seconds) > CANDIDATE_SECONDS:
                    break  # slow steps: one after the first is enough to rank them
                if budget.spent():
                    break  # what it measured so far ranks it
            times[candidate] = 1e3 * step_timing.step_time(seconds)
            result = f"{times[candidate]:.1f} ms per step"
        except step_timing.TooLarge as e:
            skipped[candidate] = str(e)
            result = f"skipped: {e}"
        spent_on.append(budget.used() - began)
        left = len(candidates) - index - 1
        log(
            "autotune %s: %s %s (%.1f s)%s",
            setting,
            candidate,
            result,
            spent_on[-1],
            f"; about {min(left * sum(spent_on) / len(spent_on), budget.left()):.0f} s for the "
            f"{left} left (budget left {budget.left():.0f} s)"
            if left and not budget.spent()
            else "",
        )
    return times, skipped, []


def choose(
    setting: str,
    candidates: Sequence[str],
    key: str,
    timer: Callable,
    budget: Budget,
    what="",
    log=logging.info,
) -> dict:
    """The fastest of `candidates` by timer(candidate) -> step seconds (time_candidates), or the
    cached decision when the cache holds `key` (reusable; then nothing is timed).

    Returns {'choice', 'source': 'cache'|'timed', 'times_ms': {candidate: ms or None},
    'skipped': {candidate: why}, 'measured': when, and when the budget cut it short 'untimed'
    (candidates not timed) and 'budget_seconds'}; timed decisions are stored in the cache. With
    the budget spent before any candidate was timed: {'choice': 'auto', 'source': 'rule',
    'reason'}. what: the timed steps' shapes, for the log; log: how what is timed is logged (the
    decision always is, at INFO)."""
    cached = autotune_cache.load_cache().get(key)
    if reusable(cached, candidates, budget):
        logging.info(
            "autotune %s: %s (cached in %s)%s",
            setting,
            cached["choice"],
            autotune_cache.cache_path(),
            f"; {', '.join(cached['untimed'])} not timed within the budget of "
            f"{cached['budget_seconds']:g} s: a larger {BUDGET_KEY} times them"
            if cached.get("untimed")
            else "",
        )
        return {**cached, "source": "cache"}
    log(  # one line under 200 characters with the time before it
        "autotune %s: timing %d candidates (%s)%s; %.0f s of %s = %g left",
        setting,
        len(candidates),
        ", ".join(candidates),
        f" on {what}" if what else "",
        budget.left(),
        BUDGET_KEY,
        budget.seconds,
    )
    times, skipped, untimed = time_candidates(setting, candidates, timer, budget, log)
    if untimed and not times:
        reason = f"the autotune budget ({BUDGET_KEY} = {budget.seconds:g}) was spent first"
        logging.warning(
            "autotune %s: nothing timed: %s; 'auto' is decided by its rule", setting, reason
        )
        return {"choice": "auto", "source": "rule", "reason": reason}
    if not times:
        raise NothingFits(f"autotune {setting}: no candidate fits: {skipped}")
    choice = min(times, key=times.get)
    now = datetime.datetime.now(datetime.timezone.utc)
    decision = {
        "choice": choice,
        "times_ms": {c: times.get(c) for c in candidates},
        "skipped": skipped,
        "measured": now.isoformat(timespec="seconds"),
    }
    if untimed:
        decision.update(untimed=untimed, budget_seconds=budget.seconds)
        logging.warning(
            "autotune %s: the budget (%s = %g) ran out: %s, the fastest of those timed (%s); "
            "not timed: %s",
            setting,
            BUDGET_KEY,
            budget.seconds,
            choice,
            ", ".join(times),
            ", ".join(untimed),
        )
    logging.info(
        "autotune %s: %s (ms per step: %s)",
        setting,
        choice,
        ", ".join(f"{c} {t:.1f}" for c, t in times.items()),
    )
    autotune_cache.store(key, decision)
    return {**decision, "source": "timed"}


def resolve(
    config,
    build: Callable,
    num_tasks: int,
    image_shape,
    tunables: Sequence[Tunable],
    *,
    timer: Optional[Callable] = None,
    budget: Optional[Budget] = None,
    nested: bool = False,
):
    """(config with every 'auto' of `tunables` decided, {setting: record}).

    Args:
      config: the run's config (config.autotune_budget_seconds bounds the timing).
      build: build(config) -> Method, the run's method built from a config.
      num_tasks, image_shape: the run's shapes (one image, without the batch).
      tunables: decided in order, each timed with the ones before it already decided; a 'mix'
        one (model.conv) is timed for each candidate with the later ones decided for that
        candidate (so conv and the affinity strategy are chosen together; those decisions are
        cached and reused).
      timer: timer(config, tunable, candidate) -> step seconds replaces the real timing (tests).
      budget: shared by every decision (nested ones too); default: a new one of
        config.autotune_budget_seconds.
      nested: decided for one candidate of an outer setting: what is timed is logged at
        --verbosity=1 only (the console gets each outer candidate's line and every decision).

    Returns:
      The config, and {setting: record}; record: {'choice', 'source': 'explicit' | 'rule' |
      'cache' | 'timed', and for timed/cached ones 'times_ms' (None = skipped), 'skipped',
      'measured' (choose)}.
    """
    budget = budget or Budget(config.autotune_budget_seconds)
    records, decided = {}, {}  # decided: later settings already decided with a 'mix' choice
    batch_size = step_timing.per_device_batch(config)
    what = (
        f"{config.method} steps of {batch_size} {'x'.join(map(str, image_shape))} images, "
        f"{num_tasks} tasks"
    )
    batch = None
    for index, tunable in enumerate(tunables):
        if tunable.path in decided:
            records[tunable.path] = decided[tunable.path]
            config = with_value(config, tunable.path, decided[tunable.path]["choice"])
            continue
        value = get(config, tunable.path)
        if value != "auto":
            records[tunable.path] = {"choice": value, "source": "explicit"}
            continue
        if mode() == "rule":
            records[tunable.path] = {"choice": "auto", "source": "rule"}
            continue
        if timer is None and batch is None:
            batch = step_timing.random_batch(
                batch_size, image_shape, num_tasks, config.model.num_classes
            )

        later, inner = tunables[index + 1 :], {}  # inner: candidate -> the later settings' records

        def time_candidate(candidate, tunable=tunable, base=config, later=later, inner=inner):
            candidate_config = with_value(base, tunable.path, candidate)
            if tunable.step == "mix" and later:  # with the later settings at their best for it
                candidate_config, inner[candidate] = resolve(
                    candidate_config,
                    build,
                    num_tasks,
                    image_shape,
                    later,
                    timer=timer,
                    budget=budget,
                    nested=True,
                )
            if timer is not None:
                return timer(candidate_config, tunable, candidate)
            return step_timing.time_method_step(
                build(candidate_config), tunable.step, batch, TIMED_STEPS
            )

        candidates = tunable.candidates(config, num_tasks)
        # A 'mix' times steps that the later settings shape too (still 'auto': their rules).
        extra = (
            [path for t in later for path in (t.path, *t.key_paths)] + list(MIX_KEY_PATHS)
            if tunable.step == "mix"
            else []
        )
        depends_on = {path: get(config, path) for path in (*tunable.key_paths, *extra)}
        key = autotune_cache.cache_key(
            config, tunable.path, num_tasks, image_shape, batch_size, candidates, depends_on
        )
        records[tunable.path] = choose(
            tunable.path,
            candidates,
            key,
            time_candidate,
            budget,
            what,
            log=functools.partial(logging.vlog, 1) if nested else logging.info,
        )
        config = with_value(config, tunable.path, records[tunable.path]["choice"])
        decided.update(inner.get(records[tunable.path]["choice"], {}))
    return config, records
