"""Rough cost estimates of a study's stages, before it starts and while it runs.

A stage's estimate is its start-up, its autotune when the cache does not hold its decision yet,
its training steps x seconds per step, and its evaluation:
- steps: the stage's epochs (config.num_epochs, raised to hold config.min_train_steps, capped
  by config.max_steps) x batches of the training split: at most, as early stopping can end a
  stage sooner;
- seconds per step: the trunk passes of a step (`passes_per_step`, a rough count per method)
  x seconds per trunk pass, measured where the autotune cache holds a model.conv decision timed
  on the stage's shapes (image, width, per-device batch, dtype) on this machine, the stage's
  own method first; else a rule of thumb (RULE_SECONDS_PER_UNIT x per-device batch x pixels x
  width, measured on 2 CPU cores);
- evaluation: the validation split after every epoch and validation and test once more at the
  end, forward only (a third of a trunk pass per example and network);
- networks trained side by side ('groups', 'pairs', 'random') on CPU: vmapped, each step
  VMAP_SLOWDOWN_PER_NETWORK x networks times slower than the same networks unrolled; unrolled,
  UNROLLED_COMPILE_SECONDS_PER_NETWORK of compiling a network.
While the study runs, `time_left` scales the estimates of the stages left by how long the stages
run so far took against their own estimates. Pure: no JAX, no files.
"""

import dataclasses
import json
import math
import statistics
from typing import Callable, Optional

from tag_jax.console import duration
from tag_jax.data.pipeline import num_batches

# Seconds per trunk pass per (example x pixel x filter): the training loop's 88 ms MTL step at
# batch 64, 32x32 images, width 32 on 2 CPU cores (benchmarks/README.md, loop overhead).
RULE_SECONDS_PER_UNIT = 88e-3 / (64 * 32 * 32 * 32)
STEP_OVERHEAD_SECONDS = 2e-3  # the loop's own cost of a step, whatever its size
STARTUP_SECONDS = 15.0  # a stage's set-up: data, building and compiling its steps
EVAL_SHARE = 1 / 3  # an evaluation forward pass, as a share of a training pass
# On CPU a step of G vmapped networks took about 1.4 x G times as long as the G networks
# unrolled (2026-12-06, load 6-13, 8x8 images, width 16, batch 64: 10 networks 0.40 against
# 0.027 s a step, 55 networks 11-18 s against 0.17-0.26 s).
VMAP_SLOWDOWN_PER_NETWORK = 1.4
# Unrolled, their training step compiled for about 2 s a network on CPU (55 networks: 110 s,
# 2026-12-07, 2 quiet cores).
UNROLLED_COMPILE_SECONDS_PER_NETWORK = 2.0
STACKED_METHODS = ("groups", "pairs", "random")
CACHE_BASIS, RULE_BASIS = "autotune cache", "rule of thumb"


@dataclasses.dataclass(frozen=True)
class Workload:
    """What the estimate needs of the study's data: split sizes, tasks, one image's shape."""

    num_train: int
    num_validation: int
    num_test: int
    num_tasks: int
    image_shape: tuple


@dataclasses.dataclass(frozen=True)
class StageEstimate:
    """One stage's estimate: steps (at most), seconds (rough), the basis of its seconds per
    pass, and the autotune seconds included (its budget, when the cache misses its decision)."""

    name: str
    method: str
    steps: int
    seconds: float
    basis: str
    autotune_seconds: float = 0.0


def value(config, path: str, default=None):
    """config[path] of a dotted path (a ConfigDict, or a flat dict of dotted keys); default when
    it has no such key."""
    if path in config:
        return config[path]
    node = config
    for part in path.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError):
            return default
    return node


def networks(config, num_tasks: int) -> int:
    """Networks the stage's method trains side by side (seeds of stacked copies included)."""
    method, seeds = value(config, "method"), value(config, "groups.seeds", 1) or 1
    if method == "pairs":
        return num_tasks * (num_tasks + 1) // 2
    if method == "dmtg":
        return value(config, "dmtg.num_groups", 1)
    if method == "random":
        return value(config, "groups.num_random_groups", 1) * seeds
    if method == "groups":
        given = value(config, "groups.groups", ())
        ks = value(config, "study.max_groups", (1,))
        return (len(given) or value(config, "groups.max_groups", 0) or max(ks)) * seeds
    return 1


def passes_per_step(config, num_tasks: int) -> float:
    """Trunk passes of an average training step (tag_jax.methods' trunk_passes, roughly): one per
    network, a task's backward pull per task for GradNorm and PCGrad, and TAG's / CS's measured
    step's extra passes (TAG exact: a lookahead forward per source task and a pull per task;
    first-order: the pulls; sketched: one per sketch direction) spread over every_n_steps."""
    method, every = value(config, "method"), value(config, "affinity.every_n_steps", 1) or 1
    if method in ("gradnorm", "pcgrad"):
        return 1.0 + num_tasks
    if method == "cs":
        return 1.0 + num_tasks / every
    if method == "tag":
        estimator = value(config, "affinity.estimator", "exact")
        extra = {"first_order": num_tasks, "sketched": value(config, "affinity.sketch_size", 1)}
        return 1.0 + extra.get(estimator, 2 * num_tasks) / every
    return float(networks(config, num_tasks))


def training_steps(config, num_train: int) -> int:
    """Training steps of a run of `config` on `num_train` examples (at most: early stopping)."""
    per_epoch = num_batches(num_train, config.batch_size, config.drop_remainder)
    epochs = max(config.num_epochs, math.ceil(config.min_train_steps / per_epoch))
    steps = epochs * per_epoch
    return min(steps, config.max_steps) if config.max_steps > 0 else steps


def cached_pass_seconds(config, batch: int, workload: Workload, decisions: dict, where: dict):
    """(seconds per trunk pass, whether measured on the stage's own method) from the autotune
    cache's model.conv decisions (tag_jax.autotune_cache: key JSON -> decision) whose shapes are
    the stage's and whose fields match `where` (backend, device kind, host); None when none does.
    A decision's chosen time per step is divided by its method's passes_per_step; the stage's own
    method first, else the median over the others (groups and random: their networks are not in
    the key)."""
    own, others = [], []
    for key, decision in decisions.items():
        fields = json.loads(key)
        wanted = {
            "setting": "model.conv",
            "image_shape": list(workload.image_shape),
            "width": config.model.width,
            "batch": batch,
            "dtype": config.dtype,
            **where,
        }
        times = decision.get("times_ms") or {}
        if any(fields.get(k) != v for k, v in wanted.items()) or not times.get(decision["choice"]):
            continue
        if fields["method"] in ("groups", "random"):
            continue
        seconds = times[decision["choice"]] / 1e3 / passes_per_step(fields, fields["tasks"])
        same = fields["method"] == config.method and fields["tasks"] == workload.num_tasks
        (own if same else others).append(seconds)
    if own or others:
        return statistics.median(own or others), bool(own)
    return None


def rule_pass_seconds(config, batch: int, workload: Workload) -> float:
    """The rule of thumb's seconds per trunk pass (RULE_SECONDS_PER_UNIT)."""
    pixels = math.prod(workload.image_shape[:2])
    return RULE_SECONDS_PER_UNIT * batch * pixels * config.model.width


def estimate_stage(
    name: str,
    config,
    workload: Workload,
    decisions: dict,
    *,
    where: Optional[dict] = None,
    device_batch: Callable = lambda config: config.batch_size,
    autotune_budget: float = 0.0,
    cpu_network_strategy: Optional[Callable] = None,
) -> StageEstimate:
    """The estimate of one stage run with `config` (its stage config).

    decisions: the autotune cache's {key JSON: decision}; where: key fields that must match
    (this machine's backend, device kind, host); device_batch(config): the per-device batch
    (tag_jax.step_timing.per_device_batch); autotune_budget: seconds counted when the cache has
    no decision of this stage's own method on its shapes (0: the timing is off);
    cpu_network_strategy(config, networks): on a CPU backend, how the stage's networks are
    mapped ('unrolled', 'vmap': tag_jax.stacking.resolve), None elsewhere."""
    batch = device_batch(config)
    cached = cached_pass_seconds(config, batch, workload, decisions, where or {})
    per_pass = cached[0] if cached else rule_pass_seconds(config, batch, workload)
    count = networks(config, workload.num_tasks)
    strategy = (
        cpu_network_strategy(config, count)
        if cpu_network_strategy and config.method in STACKED_METHODS
        else None
    )
    if strategy == "vmap" and not (cached and cached[1]):  # a timed step holds any slowdown
        per_pass *= VMAP_SLOWDOWN_PER_NETWORK * count
    compile_seconds = UNROLLED_COMPILE_SECONDS_PER_NETWORK * count if strategy == "unrolled" else 0
    steps = training_steps(config, workload.num_train)
    train = steps * (STEP_OVERHEAD_SECONDS + passes_per_step(config, workload.num_tasks) * per_pass)
    epochs = -(-steps // num_batches(workload.num_train, config.batch_size, config.drop_remainder))
    evaluated = (epochs + 1) * workload.num_validation + workload.num_test
    evaluation = evaluated / batch * count * EVAL_SHARE * per_pass
    autotune = 0.0 if cached and cached[1] else autotune_budget
    return StageEstimate(
        name,
        config.method,
        steps,
        STARTUP_SECONDS + compile_seconds + autotune + train + evaluation,
        CACHE_BASIS if cached else RULE_BASIS,
        autotune,
    )


def estimate_stages(named_configs, workload: Workload, decisions: dict, **kwargs) -> list:
    """[StageEstimate] of (name, stage config) pairs in run order; a method's autotune is counted
    once, at its first stage (later ones read the decision it caches). kwargs: estimate_stage's."""
    estimates, timed = [], set()
    for name, config in named_configs:
        estimate = estimate_stage(name, config, workload, decisions, **kwargs)
        if estimate.method in timed and estimate.autotune_seconds:
            estimate = dataclasses.replace(
                estimate,
                seconds=estimate.seconds - estimate.autotune_seconds,
                autotune_seconds=0.0,
            )
        timed.add(estimate.method)
        estimates.append(estimate)
    return estimates


def time_left(estimates: list, took: dict, skipped=()) -> float:
    """Seconds the stages neither run nor skipped will take: their estimates, scaled by how long
    the stages run so far took against theirs. took: {stage name: seconds it took} of the stages
    this study ran; skipped: names of the stages done before (read back, not timed)."""
    estimated = {e.name: e.seconds for e in estimates}
    left = sum(s for name, s in estimated.items() if name not in took and name not in skipped)
    ran = [name for name in took if name in estimated]
    if not ran:
        return left
    return left * sum(took[name] for name in ran) / max(sum(estimated[n] for n in ran), 1e-9)


def plan_lines(estimates: list) -> list:
    """The plan as printed before a study starts: the total, then one line per stage (its
    number, name, method, steps at most, estimate and its basis)."""
    count = len(estimates)
    lines = [
        f"Study plan: {count} stages, about {duration(sum(e.seconds for e in estimates))} in all "
        "(rough estimates, from the autotune cache where it holds these shapes, else a rule of "
        "thumb; early stopping can end a stage sooner)"
    ]
    for i, e in enumerate(estimates, 1):
        autotune = f", autotune up to {duration(e.autotune_seconds)}" if e.autotune_seconds else ""
        lines.append(
            f"  stage {i}/{count} {e.name} ({e.method}): up to {e.steps:,} steps, "
            f"~{duration(e.seconds)} ({e.basis}{autotune})"
        )
    return lines
