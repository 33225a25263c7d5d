"""TAG and CS step time relative to a plain MTL step, per batching strategy (medians, one run).

  python benchmarks/affinity_step.py --image_size 64 --batch_size 32 --tasks 9 40

Prints, for each number of tasks T and strategy: median step times, the ratios
TAG/plain and CS/plain, the amortised overhead of recording every 10th step,
compile time and XLA's temporary-buffer size of the compiled step (its peak
scratch memory). The exact lookahead needs about T extra trunk forwards and T
trunk backwards, so on a compute-bound CPU the TAG ratio cannot be far below T+1.
"""

import argparse
import statistics
import time

import jax
import numpy as np

from tag_jax import default_config, methods, models


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--tasks", type=int, nargs="+", default=[9, 40])
    parser.add_argument("--strategies", nargs="+", default=["unrolled", "vmap", "map"])
    parser.add_argument("--conv", default="auto", choices=models.CONV_IMPLS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every_n_steps", type=int, default=10)
    return parser.parse_args(argv)


def random_batch(num_tasks, image_size, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
        "labels": rng.integers(0, 2, (batch_size, num_tasks)).astype(np.int32),
        "mask": np.ones(batch_size, np.float32),
    }


def time_step(step_fn, state, batch, repeats, compiler_options=None):
    """(compile seconds, median step seconds, XLA temp bytes) of a jitted (state, batch) step;
    compiler_options: the method's (Method.compiler_options)."""
    start = time.perf_counter()
    compiled = jax.jit(step_fn, compiler_options=compiler_options).lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_bytes = getattr(memory, "temp_size_in_bytes", float("nan")) if memory else float("nan")
    jax.block_until_ready(compiled(state, batch))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(state, batch))
        times.append(time.perf_counter() - start)
    return compile_seconds, statistics.median(times), temp_bytes


def measure(num_tasks, strategy, args):
    """Each of mtl, tag, cs built as the training loop builds it (tag/cs: their measured step)."""
    shape = (args.image_size, args.image_size, 3)
    batch = random_batch(num_tasks, args.image_size, args.batch_size)
    timings = {}
    for name in ("mtl", "tag", "cs"):
        config = default_config.get_base_config()
        config.method = name
        config.model.width, config.model.conv = args.width, args.conv
        config.batch_size = args.batch_size  # what autotune times 'auto' on
        config.affinity.strategy = strategy
        config.optimizer.learning_rate = 0.01
        methods.validate(config)
        method = methods.build(
            config, [f"t{i}" for i in range(num_tasks)], shape, steps_per_epoch=100
        )
        state = jax.jit(method.init_state)(jax.random.key(0))
        timings["plain" if name == "mtl" else name] = time_step(
            method.measured_step or method.train_step,
            state,
            batch,
            args.repeats,
            method.compiler_options,
        )
    return timings


def main(argv=None):
    args = parse_args(argv)
    print(
        f"backend {jax.default_backend()}, conv {models.resolve_conv_impl(args.conv)}, "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}, width {args.width}, "
        f"median of {args.repeats}"
    )
    print(
        "| T | strategy | plain ms | TAG ms | TAG/plain | CS/plain | TAG every "
        f"{args.every_n_steps} steps | TAG compile s | TAG temp MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    n = args.every_n_steps
    for num_tasks in args.tasks:
        for strategy in args.strategies:
            r = measure(num_tasks, strategy, args)
            plain, tag, cs = r["plain"][1], r["tag"][1], r["cs"][1]
            amortised = ((n - 1) * plain + tag) / (n * plain)
            print(
                f"| {num_tasks} | {strategy} | {1e3 * plain:.0f} | {1e3 * tag:.0f} | "
                f"{tag / plain:.1f} | {cs / plain:.1f} | {amortised:.2f}x | {r['tag'][0]:.1f} | "
                f"{r['tag'][2] / 2**20:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
