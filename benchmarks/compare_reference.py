"""The project's steps against the TensorFlow reference structure, in one process.

  python benchmarks/compare_reference.py [--image_size 32] [--batch_size 32] [--tasks 9]
      [--width 64] [--rounds 5] [--conv auto] [--strategy auto]

Builds tag_jax's plain (mtl), TAG (measured step, every step) and CS steps through
tag_jax.methods.build as the training loop does, and benchmarks/reference_tf.py's TF2 graph
steps on the same trunk, batch and task count; warms all up, then runs `rounds` rounds in
which every step runs a few times in turn. Prints ms per step (median over rounds) and the
medians over rounds of the per-round ratios project / TF, as one JSON line.
"""

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
import reference_tf  # pylint: disable=g-bad-import-order (this folder)

from tag_jax import default_config, methods


def project_steps(args):
    """{name: (jitted step, state)} for mtl, tag and cs."""
    steps = {}
    shape = (args.image_size, args.image_size, 3)
    for name, method in (("plain", "mtl"), ("tag", "tag"), ("cs", "cs")):
        config = default_config.get_base_config()
        config.method = method
        config.model.width, config.model.conv = args.width, args.conv
        config.batch_size = args.batch_size  # what autotune times 'auto' on
        config.affinity.strategy = args.strategy
        config.affinity.every_n_steps = 1
        config.optimizer.learning_rate = 0.01
        built = methods.build(config, [f"t{i}" for i in range(args.tasks)], shape, 100)
        steps[name] = (
            jax.jit(
                built.measured_step or built.train_step,
                donate_argnums=0,
                compiler_options=built.compiler_options,
            ),
            jax.jit(built.init_state)(jax.random.key(0)),
        )
    return steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=9)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="steps of each kind per round")
    parser.add_argument("--conv", default="auto")
    parser.add_argument(
        "--strategy",
        default="auto",
        help="config.affinity.strategy of the TAG and CS steps ('auto' times them)",
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(args.batch_size, args.image_size, args.image_size, 3)).astype(
        np.float32
    )
    labels = rng.integers(0, 2, (args.batch_size, args.tasks)).astype(np.int32)
    batch = {"image": images, "labels": labels, "mask": np.ones(args.batch_size, np.float32)}
    net = reference_tf.ReferenceNet(
        image_size=args.image_size, channels=3, width=args.width, num_tasks=args.tasks
    )
    tf_steps = dict(zip(("plain", "tag", "cs"), reference_tf.make_steps(net)))
    project = project_steps(args)

    def run_project(name):
        step, state = project[name]
        for _ in range(args.repeats):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        project[name] = (step, state)

    def run_tf(name):
        for _ in range(args.repeats):
            out = tf_steps[name](images, labels)
        out.numpy()

    runners = {f"project_{n}": (lambda n=n: run_project(n)) for n in project}
    runners.update({f"tf_{n}": (lambda n=n: run_tf(n)) for n in tf_steps})
    for run in runners.values():  # compile and warm up
        run()
    times = {name: [] for name in runners}
    for round_index in range(args.rounds):
        order = (
            list(runners)[round_index % len(runners) :]
            + list(runners)[: round_index % len(runners)]
        )
        for name in order:
            start = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - start) / args.repeats)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    ratios = {
        n: statistics.median(p / t for p, t in zip(times[f"project_{n}"], times[f"tf_{n}"]))
        for n in ("plain", "tag", "cs")
    }
    print(
        json.dumps(
            {
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "tasks": args.tasks,
                "width": args.width,
                "conv": args.conv,
                "strategy": args.strategy,
                "backend": jax.default_backend(),
                "loadavg_at_end": os.getloadavg()[0],
                "ms_per_step": {k: round(v, 1) for k, v in ms.items()},
                "project_over_tf": {k: round(v, 3) for k, v in ratios.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
