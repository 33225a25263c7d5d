"""Is `auto` within 10% of the best explicit choice? One JSON line of ratios per setting.

  python benchmarks/autotune_check.py [--image_size 32] [--batch_size 32] [--width 64]
      [--tasks 9] [--groups 3] [--repeats 5] [--checks conv tag dmtg] [--quick]

For each setting (`model.conv` on the plain MTL step, `affinity.strategy` on TAG's measured
step, `dmtg.branch_strategy` on the DMTG step) it lets tag_jax.autotune decide 'auto' as a run
would (timing on, an empty cache of its own), then compiles the step with every explicit
candidate (the other tuned settings fixed at auto's choices) and times them in alternating
rounds, median per candidate (one that is autotune.GIVE_UP times slower than the fastest in
the first timed round is not timed further). ratio = time of auto's choice / time of the
fastest candidate
(1.0 = auto picked the fastest; the target is <= 1.1). --quick: tiny shapes, to check that
it runs.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

import jax

from tag_jax import autotune, autotune_cache, methods, step_timing
from tag_jax.default_config import get_base_config

# check name -> (method, setting)
CHECKS = {
    "conv": ("mtl", "model.conv"),
    "tag": ("tag", "affinity.strategy"),
    "cs": ("cs", "affinity.strategy"),
    "dmtg": ("dmtg", "dmtg.branch_strategy"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=9)
    parser.add_argument("--groups", type=int, default=3, help="DMTG branches K")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checks", nargs="+", default=["conv", "tag", "dmtg"], choices=CHECKS)
    parser.add_argument(
        "--quick", action="store_true", help="8x8 images, width 4, batch 8, 3 tasks"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.width, args.batch_size, args.tasks, args.repeats = 8, 4, 8, 3, 3
    return args


def benchmark_config(method: str, *, image_size: int, batch_size: int, width: int, groups: int = 3):
    config = get_base_config()
    config.method = method
    config.image_size, config.batch_size, config.model.width = image_size, batch_size, width
    config.mesh.data = 1
    config.dmtg.num_groups = groups
    return config


def check(config, num_tasks: int, setting: str, repeats: int) -> dict:
    """auto's choice for `setting` and every explicit candidate's median step time (ms)."""
    names = [f"t{i}" for i in range(num_tasks)]
    shape = (config.image_size, config.image_size, 3)
    auto = methods.build(config, names, shape, steps_per_epoch=100).autotune
    tunable = next(
        t for t in (autotune.CONV,) + methods.REGISTRY[config.method].tuned if t.path == setting
    )
    fixed = config
    for path, decision in auto.items():  # the other settings as auto decided them
        if path != setting:
            fixed = autotune.with_value(fixed, path, decision["choice"])
    batch = step_timing.random_batch(
        step_timing.per_device_batch(config), shape, num_tasks, config.model.num_classes
    )
    compiled = {}
    for candidate in tunable.candidates(fixed, num_tasks):
        method = methods.build(autotune.with_value(fixed, setting, candidate), names, shape, 100)
        try:
            compiled[candidate] = list(step_timing.compile_step(method, tunable.step, batch))
        except step_timing.TooLarge as e:
            print(f"{setting}={candidate} skipped: {e}", file=sys.stderr)
    seconds = {candidate: [] for candidate in compiled}
    for round_index in range(repeats + 1):  # the first round warms up and is dropped
        for candidate, (step, state, data) in compiled.items():
            compiled[candidate][1], times = step_timing.run_steps(step, state, data, 1)
            seconds[candidate].extend(times)
        if round_index == 1:  # a candidate GIVE_UP x slower than the best cannot be the best
            fastest = min(s[1] for s in seconds.values())
            compiled = {
                c: v for c, v in compiled.items() if seconds[c][1] <= autotune.GIVE_UP * fastest
            }
    explicit = {c: 1e3 * statistics.median(s[1:]) for c, s in seconds.items()}
    best = min(explicit, key=explicit.get)
    choice = auto[setting]["choice"]
    return {
        "method": config.method,
        "setting": setting,
        "auto": choice,
        "auto_times_ms": auto[setting].get("times_ms"),
        "explicit_ms": explicit,
        "best": best,
        "ratio": explicit[choice] / explicit[best],
    }


def run_checks(args, num_tasks: int, names=None) -> list:
    """check() for each of `names` (default args.checks) at the args' shapes, timing forced on
    with a fresh cache."""
    previous = {k: os.environ.get(k) for k in (autotune.MODE_ENV, autotune_cache.CACHE_DIR_ENV)}
    results = []
    with tempfile.TemporaryDirectory() as cache_dir:
        os.environ[autotune.MODE_ENV], os.environ[autotune_cache.CACHE_DIR_ENV] = "time", cache_dir
        try:
            for name in names or args.checks:
                method, setting = CHECKS[name]
                config = benchmark_config(
                    method,
                    image_size=args.image_size,
                    batch_size=args.batch_size,
                    width=args.width,
                    groups=args.groups,
                )
                results.append(
                    {"tasks": num_tasks, **check(config, num_tasks, setting, args.repeats)}
                )
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return results


def main(argv=None):
    args = parse_args(argv)
    results = run_checks(args, args.tasks)
    worst = max(r["ratio"] for r in results)
    print(
        json.dumps(
            {
                "benchmark": "autotune_check",
                "backend": jax.default_backend(),
                "device_kind": jax.devices()[0].device_kind,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "width": args.width,
                "tasks": args.tasks,
                "repeats": args.repeats,
                "checks": results,
                "max_ratio": worst,
                "within_10_percent": worst <= 1.1,
            }
        )
    )


if __name__ == "__main__":
    main()
