"""DMTG step time for K = 2, 3, 4 branches, both branch strategies, relative to the plain MTL step.

  python benchmarks/dmtg_step.py [--image_size 32] [--batch_size 32] [--width 32] [--tasks 9]
      [--groups 2 3 4] [--strategies unrolled vmap] [--conv auto] [--repeats 10]

All steps are built by their methods on the same trunk (`mtl`: steps.make_mtl_step on
models.Trunk; `dmtg`: K such trunks) and compiled first; then `repeats` rounds time
every step once on one fixed random batch, in turn, so that a change of machine load
hits all of them alike. Prints the median milliseconds per step and its ratio to MTL's.
"""

import argparse
import time

import jax
import numpy as np

from tag_jax import methods
from tag_jax.default_config import get_base_config


def benchmark_config(args, method: str, num_groups: int = 0, strategy: str = "auto"):
    config = get_base_config()
    config.method = method
    config.model.width = args.width
    config.model.conv = args.conv
    config.batch_size = args.batch_size  # what autotune times 'auto' on
    config.optimizer.name = "adam"
    config.dmtg.num_groups = num_groups or 1
    config.dmtg.branch_strategy = strategy
    return config


def random_batch(args):
    rng = np.random.default_rng(0)
    return {
        "image": rng.normal(size=(args.batch_size, args.image_size, args.image_size, 3)).astype(
            np.float32
        ),
        "labels": rng.integers(0, 2, size=(args.batch_size, args.tasks)).astype(np.int32),
        "mask": np.ones((args.batch_size,), np.float32),
    }


def compiled_step(config, batch):
    """(jitted step, state) for `batch`'s shapes, with the step already compiled and run once."""
    task_names = tuple(f"task{t}" for t in range(batch["labels"].shape[1]))
    method = methods.build(config, task_names, batch["image"].shape[1:], steps_per_epoch=100)
    step = jax.jit(method.train_step, donate_argnums=0, compiler_options=method.compiler_options)
    state, metrics = step(method.init_state(jax.random.key(0)), batch)
    jax.block_until_ready(metrics)
    return step, state


def median_step_ms(variants: dict, batch, repeats: int) -> dict:
    """name -> median wall milliseconds of one step, timed round-robin over the variants."""
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (step, state) in variants.items():
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times[name].append(1000 * (time.perf_counter() - start))
            variants[name] = (step, state)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=9)
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--strategies", nargs="+", default=["unrolled", "vmap"])
    parser.add_argument("--conv", default="auto", help="model.conv: xla | im2col | auto")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    batch = random_batch(args)
    variants = {"mtl": compiled_step(benchmark_config(args, "mtl"), batch)}
    for strategy in args.strategies:
        for k in args.groups:
            variants[f"dmtg K={k} {strategy}"] = compiled_step(
                benchmark_config(args, "dmtg", k, strategy), batch
            )
    ms = median_step_ms(variants, batch, args.repeats)
    print(
        f"backend {jax.default_backend()}, image {args.image_size}, batch {args.batch_size}, "
        f"width {args.width}, {args.tasks} tasks, conv {args.conv}, median of {args.repeats}"
    )
    print(f"{'step':<22}{'ms':>10}{'/ MTL':>8}")
    for name, value in ms.items():
        print(f"{name:<22}{value:>10.1f}{value / ms['mtl']:>8.2f}")


if __name__ == "__main__":
    main()
