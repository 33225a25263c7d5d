"""Steps per second on 1, 2, 4, 8 devices for a fixed GLOBAL batch (data parallel), one run.

  python benchmarks/scaling.py                      # 8 simulated CPU devices
  python benchmarks/scaling.py --method tag --devices 1 2 4 8 --batch_size 256

On one CPU the simulated devices share the same cores, so this measures the
overhead of sharding (collectives, partitioning), not a speed-up; on a real
multi-GPU/TPU host the same script measures the speed-up. Without an XLA_FLAGS
setting of its own, the script asks XLA for 8 host devices (CPU only).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tag_jax import default_config, methods, sharding  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="mtl", choices=("mtl", "tag", "cs"))
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=10)
    return parser.parse_args(argv)


def steps_per_second(args, num_devices: int) -> float:
    config = default_config.get_base_config()
    config.method, config.model.width, config.mesh.data = args.method, args.width, num_devices
    config.affinity.every_n_steps = 1
    mesh = sharding.create_mesh(config.mesh)
    shape = (args.image_size, args.image_size, 3)
    method = methods.build(config, [f"t{i}" for i in range(args.tasks)], shape, steps_per_epoch=100)
    state_sharding = sharding.replicated(mesh)
    state = jax.jit(method.init_state, out_shardings=state_sharding)(jax.random.key(0))
    step = sharding.jit_train_step(
        method.measured_step or method.train_step,
        state_sharding,
        mesh,
        compiler_options=method.compiler_options,
    )
    rng = np.random.default_rng(0)
    batch = sharding.global_batch(
        {
            "image": rng.uniform(size=(args.batch_size, *shape)).astype(np.float32),
            "labels": rng.integers(0, 2, (args.batch_size, args.tasks)).astype(np.int32),
            "mask": np.ones(args.batch_size, np.float32),
        },
        mesh,
    )
    state, _ = step(state, batch)  # compile
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    devices = [n for n in args.devices if n <= jax.device_count()]
    print(
        f"{jax.device_count()} {jax.default_backend()} devices; method {args.method}, global batch "
        f"{args.batch_size}, {args.image_size}px, width {args.width}, {args.tasks} tasks; "
        f"median of {args.repeats} steps"
    )
    print("| devices | steps/s | relative to 1 device |")
    print("|---|---|---|")
    base = None
    for n in devices:
        rate = steps_per_second(args, n)
        base = base or rate
        print(f"| {n} | {rate:.2f} | {rate / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
