"""'auto' settings decided by timing their candidates on the run's own shapes and backend.

`resolve` replaces every 'auto' among a method's tunable settings (`model.conv` for all
methods, plus what the method registers: `affinity.strategy` for TAG/CS,
`dmtg.branch_strategy` for DMTG) by the candidate whose step was fastest: each
candidate's step (the method's own, built as the run builds it; for `model.conv` the run's
mix of train and measured steps, weighted by how often each runs: `step_mix`) is compiled and
run TIMED_STEPS times on random data of the run's shapes (per-device batch, image shape, tasks,
dtype) on one device; its time is the median of the steps after the first (a candidate far
slower than the best so far is not stepped further: GIVE_UP, GIVE_UP_FIRST; nor one whose steps
took CANDIDATE_SECONDS, from its second step on). A candidate
whose compiled step needs more scratch memory than the device has free is skipped, not run.
The times and the choice are logged and returned as a JSON-able record
(`Method.autotune`, for results.json), and the decision is cached (`cache_path()`), keyed by
backend, device kind (and the CPU model on CPU), jax version, the setting and the shapes and
config values that shape the timed step, so later runs skip the timing.

Explicit values always win and are never timed. With TAG_JAX_AUTOTUNE=rule nothing is
timed: 'auto' stays and is resolved by the fixed rules of `models.resolve_conv_impl` and
`stacking.resolve` (the test suite runs this way).
"""

import copy
import dataclasses
import datetime
import json
import os
import statistics
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from tag_jax import interrupts, models, reporting

MODE_ENV = "TAG_JAX_AUTOTUNE"  # 'time' (default) | 'rule'
MODES = ("time", "rule")
CACHE_DIR_ENV = "TAG_JAX_CACHE_DIR"
CACHE_FILE = "autotune.json"
CACHE_VERSION = 2  # 2: model.conv decided on the run's mix of steps (was the dominant one)
TIMED_STEPS = 4  # per candidate, after compiling; its time is the median of all but the first
GIVE_UP = 3.0  # a candidate stops being timed when a step (after its first) is this x the best
GIVE_UP_FIRST = 10.0  # ... or when its first step (warm-up included) is this x the best
CANDIDATE_SECONDS = 20.0  # a candidate's steps stop once they took this long (after 2 steps)
MEMORY_FRACTION = 0.8  # candidates needing more than this share of free memory are skipped


@dataclasses.dataclass(frozen=True)
class Tunable:
    """A config setting whose 'auto' is decided by timing.

    candidates(config, num_tasks) -> the values to time (config has the settings tuned before
    this one already decided). step: which step of the built method is timed ('train',
    'measured', or 'mix': the steps a run takes, weighted by how often it takes them, see
    step_mix). key_paths: config values, besides the shapes every key holds, that shape the step.
    """

    path: str
    candidates: Callable
    step: str = "train"
    key_paths: tuple = ()


CONV = Tunable("model.conv", lambda config, num_tasks: models.conv_candidates(), step="mix")
# How often a measured step runs: part of a 'mix' decision's key.
MIX_KEY_PATHS = ("affinity.every_n_steps",)


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


# --- the cache ---


def cache_path() -> str:
    """$TAG_JAX_CACHE_DIR/autotune.json, else ~/.cache/tag_jax/autotune.json."""
    folder = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "tag_jax"
    )
    return os.path.join(folder, CACHE_FILE)


def load_cache(path: Optional[str] = None) -> dict:
    """{key: decision} of the cache file; {} when there is none, or (with a warning) when it is
    unreadable or not a cache of this version (it is rewritten on the next store)."""
    path = path or cache_path()
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            content = json.load(f)
        if content.get("version") != CACHE_VERSION or not isinstance(
            content.get("decisions"), dict
        ):
            raise ValueError(f"not a version-{CACHE_VERSION} autotune cache")
        return content["decisions"]
    except (OSError, ValueError, AttributeError) as e:
        logging.warning("Ignoring the autotune cache %s (%s); it will be rewritten.", path, e)
        return {}


def store(key: str, decision: dict, path: Optional[str] = None) -> None:
    """Adds one decision to the cache file (re-read first, so concurrent runs lose nothing but a
    race), written atomically. A cache that cannot be written is a warning, not an error."""
    path = path or cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        decisions = {**load_cache(path), key: decision}
        reporting.write_json_atomic(path, {"version": CACHE_VERSION, "decisions": decisions})
    except OSError as e:
        logging.warning("Could not write the autotune cache %s: %s", path, e)


def host_description() -> str:
    """The CPU model and core count: CPU backends of one device kind differ by machine."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return f"{model or 'unknown cpu'} x{os.cpu_count()}"


def cache_key(
    config,
    tunable: Tunable,
    num_tasks: int,
    image_shape,
    batch_size: int,
    candidates: Sequence[str],
    extra_paths: Sequence[str] = (),
) -> str:
    """Canonical JSON of everything the decision depends on, the candidates timed included;
    extra_paths: more config values it depends on (a 'mix' decision: the later settings')."""
    device = jax.devices()[0]
    fields = {
        "setting": tunable.path,
        "candidates": list(candidates),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "jax": jax.__version__,
        "method": config.method,
        "tasks": num_tasks,
        "image_shape": list(image_shape),
        "batch": batch_size,
        "dtype": config.dtype,
        "width": config.model.width,
        "num_classes": config.model.num_classes,
        "optimizer": config.optimizer.name,
    }
    if device.platform == "cpu":
        fields["host"] = host_description()
    if tunable.path != CONV.path:
        fields["conv"] = config.model.conv
    for path in (*tunable.key_paths, *extra_paths):
        value = get(config, path)
        fields[path] = list(value) if isinstance(value, tuple) else value
    return json.dumps(fields, sort_keys=True)


# --- timing ---


def per_device_batch(config) -> int:
    """The batch one device steps on: config.batch_size over the mesh's data axis."""
    networks = max(config.mesh.networks, 1)
    data = config.mesh.data if config.mesh.data > 0 else max(len(jax.devices()) // networks, 1)
    return max(config.batch_size // data, 1)


def random_batch(
    batch_size: int, image_shape, num_tasks: int, num_classes: int, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(size=(batch_size, *image_shape)).astype(np.float32),
        "labels": rng.integers(0, num_classes, (batch_size, num_tasks)).astype(np.int32),
        "mask": np.ones(batch_size, np.float32),
    }


def free_memory_bytes(device) -> Optional[int]:
    """Free memory of `device` (host RAM for CPU), or None when unknown."""
    try:
        stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except (backends differ in what they support)
        stats = None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class TooLarge(Exception):
    """A candidate's compiled step would not fit in the device's free memory."""


class NothingFits(TooLarge, RuntimeError):
    """No candidate of a setting fits in memory (for a 'mix' candidate: it is skipped)."""


def pick_step(method, kind: str) -> Callable:
    """The method's 'train' or 'measured' step (its train step when it measures nothing)."""
    return (
        method.measured_step if kind == "measured" and method.measured_step else method.train_step
    )


def step_mix(method) -> list:
    """[(kind, share of the run's steps)]: a method with a measured step runs it every
    measure_every steps and its train step otherwise. Deciding on this mix rather than on the
    more frequent step matters: at 40-100 tasks TAG's measured step costs 50-400 plain steps, and
    a convolution that wins the plain step lost it 4-9x (benchmarks/README.md)."""
    if method.measured_step is None:
        return [("train", 1.0)]
    if method.measure_every == 1:
        return [("measured", 1.0)]
    return [("train", 1 - 1 / method.measure_every), ("measured", 1 / method.measure_every)]


def compile_step(method, kind: str, batch: dict):
    """(compiled step, initial state, batch on the device) of `method`'s `kind` step ('train' |
    'measured'), jitted with the state donated, on the first device; compile time
    logged. TooLarge when the compiled step's scratch memory exceeds MEMORY_FRACTION of the
    device's free memory."""
    device = jax.devices()[0]
    if method.seeds > 1:  # one batch per seed (tag_jax.methods.base)
        batch = {k: np.stack([v] * method.seeds) for k, v in batch.items()}
    with jax.default_device(device):
        state = jax.jit(method.init_state)(jax.random.key(0))
        batch = jax.device_put(batch, device)
        start = time.perf_counter()
        compiled = (
            jax.jit(
                pick_step(method, kind), donate_argnums=0, compiler_options=method.compiler_options
            )
            .lower(state, batch)
            .compile()
        )
    logging.info("autotune: compiled in %.1f s", time.perf_counter() - start)
    memory = compiled.memory_analysis()
    scratch = getattr(memory, "temp_size_in_bytes", None) if memory else None
    free = free_memory_bytes(device)
    if scratch and free and scratch > MEMORY_FRACTION * free:
        raise TooLarge(
            f"needs {scratch / 2**30:.1f} GiB of scratch memory, {free / 2**30:.1f} GiB free"
        )
    return compiled, state, batch


def run_steps(compiled, state, batch, steps: int):
    """(state, seconds of each of `steps` consecutive steps), the state passed from step to step."""
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        seconds.append(time.perf_counter() - start)
    return state, seconds


def time_method_step(method, kind: str, batch: dict, steps: int = TIMED_STEPS):
    """Yields the seconds of each of `steps` consecutive steps of `method` after compiling
    (compile_step), one at a time, so that a slow candidate can be abandoned early. kind 'mix':
    each yield is the step_mix-weighted mean of one step of each kind the run takes."""
    parts = step_mix(method) if kind == "mix" else [(kind, 1.0)]
    runs = [[*compile_step(method, part, batch), share] for part, share in parts]
    for _ in range(steps):
        total = 0.0
        for run in runs:
            compiled, state, on_device, share = run
            run[1], (seconds,) = run_steps(compiled, state, on_device, 1)
            total += share * seconds
        yield total


def step_time(seconds: Sequence[float]) -> float:
    """A candidate's time: the median of its steps after the first (the only one if just one)."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def choose(setting: str, candidates: Sequence[str], key: str, timer: Callable) -> dict:
    """The fastest of `candidates` by timer(candidate) -> step seconds, or the cached decision
    when the cache holds `key` (then nothing is timed).

    timer's steps are consumed one by one: a candidate whose first step is GIVE_UP_FIRST times,
    or a later step GIVE_UP times, slower than the best so far is not timed further, nor one whose
    steps took CANDIDATE_SECONDS (from its second step on). Returns {'choice', 'source':
    'cache'|'timed', 'times_ms': {candidate: ms or None}, 'skipped': {candidate: why},
    'measured': when}; timed decisions are stored in the cache."""
    cached = load_cache().get(key)
    if cached and cached.get("choice") in candidates:
        logging.info("autotune %s: %s (cached in %s)", setting, cached["choice"], cache_path())
        return {**cached, "source": "cache"}
    times, skipped = {}, {}
    for candidate in candidates:
        interrupts.raise_if_received()  # a Ctrl-C swallowed while TensorFlow or JAX imported
        try:
            seconds = []
            for step_seconds in timer(candidate):
                seconds.append(step_seconds)
                limit = GIVE_UP if len(seconds) > 1 else GIVE_UP_FIRST
                if times and 1e3 * step_seconds > limit * min(times.values()):
                    break  # hopeless: the rest of its steps would only cost time
                if len(seconds) >= 2 and sum(seconds) > CANDIDATE_SECONDS:
                    break  # slow steps: one after the first is enough to rank them
            times[candidate] = 1e3 * step_time(seconds)
        except TooLarge as e:
            skipped[candidate] = str(e)
            logging.warning("autotune %s: skipping %s: %s", setting, candidate, e)
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
    logging.info(
        "autotune %s: %s (ms per step: %s)",
        setting,
        choice,
        ", ".join(f"{c} {t:.1f}" for c, t in times.items()),
    )
    store(key, decision)
    return {**decision, "source": "timed"}


def resolve(
    config,
    build: Callable,
    num_tasks: int,
    image_shape,
    tunables: Sequence[Tunable],
    *,
    timer: Optional[Callable] = None,
):
    """(config with every 'auto' of `tunables` decided, {setting: record}).

    build(config) -> Method builds the run's method from a config. Tunables are decided in
    order, each timed with the ones before it already decided; a 'mix' one (model.conv) is timed
    for each candidate with the later ones decided for that candidate (so conv and the affinity
    strategy are chosen together; those decisions are cached and reused). record: {'choice', 'source':
    'explicit' | 'rule' | 'cache' | 'timed', and for timed/cached ones 'times_ms' (None =
    skipped), 'skipped', 'measured'}. timer(config, tunable, candidate) -> step seconds replaces
    the real timing (tests).
    """
    records, decided = {}, {}  # decided: later settings already decided with a 'mix' choice
    batch_size = per_device_batch(config)
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
            batch = random_batch(batch_size, image_shape, num_tasks, config.model.num_classes)

        later, inner = tunables[index + 1 :], {}  # inner: candidate -> the later settings' records

        def time_candidate(candidate, tunable=tunable, base=config, later=later, inner=inner):
            candidate_config = with_value(base, tunable.path, candidate)
            if tunable.step == "mix" and later:  # with the later settings at their best for it
                candidate_config, inner[candidate] = resolve(
                    candidate_config, build, num_tasks, image_shape, later, timer=timer
                )
            if timer is not None:
                return timer(candidate_config, tunable, candidate)
            return time_method_step(build(candidate_config), tunable.step, batch)

        candidates = tunable.candidates(config, num_tasks)
        # A 'mix' times steps that the later settings shape too (still 'auto': their rules).
        extra = (
            [path for t in later for path in (t.path, *t.key_paths)] + list(MIX_KEY_PATHS)
            if tunable.step == "mix"
            else []
        )
        records[tunable.path] = choose(
            tunable.path,
            candidates,
            cache_key(config, tunable, num_tasks, image_shape, batch_size, candidates, extra),
            time_candidate,
        )
        config = with_value(config, tunable.path, records[tunable.path]["choice"])
        decided.update(inner.get(records[tunable.path]["choice"], {}))
    return config, records
