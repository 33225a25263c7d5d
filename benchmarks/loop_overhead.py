"""The training loop's steps/s against the bare jitted step's (median of per-round ratios, one run).

  python benchmarks/loop_overhead.py [--config configs/synthetic_mtl.py] [--rounds 5]
      [--image_size 32] [--width 32] [--batch_size 64] [--pixels float32|uint8]

Each round times one epoch of `train.train_epoch` (batches read and sharded
config.prefetch_batches ahead in a background thread, the
jitted step, progress reports, metrics written every config.log_every_steps,
losses checked for NaN at log steps and at the epoch's end: one transfer for all
steps since the last check, no per-step host sync) and the same number of bare
calls of the same jitted step on one batch already on the device, each ended by
a wait for the device. Prints one JSON line: loop / bare time per step (1.0 =
no overhead; the target is <= 1.05).
"""

import argparse
import dataclasses
import importlib.util
import json
import statistics
import tempfile
import time

import jax
import numpy as np

from tag_jax import sharding, train
from tag_jax.data import base


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("benchmark_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def as_uint8(dataset: base.ArrayDataset) -> base.ArrayDataset:
    """The dataset with its images mapped linearly onto 0..255 (uint8), per split."""

    def quantized(images):
        low, high = images.min(), images.max()
        return np.rint(255 * (images - low) / (high - low)).astype(np.uint8)

    return base.ArrayDataset(
        dataset.task_names,
        {split: (quantized(images), labels) for split, (images, labels) in dataset.splits.items()},
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic_mtl.py")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--num_train",
        type=int,
        default=None,
        help="training examples (config.dataset.num_train; default: the config's)",
    )
    parser.add_argument(
        "--prefetch_batches",
        type=int,
        default=None,
        help="config.prefetch_batches (default: the config's)",
    )
    parser.add_argument(
        "--pixels",
        choices=("float32", "uint8"),
        default="float32",
        help="how the in-memory images are stored: the synthetic data's float32, "
        "or uint8 as the CelebA cache and npz files store them (rescaled "
        "synthetic images; the same step times, a quarter of the bytes)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    config = load_config(args.config)
    config.image_size, config.model.width, config.batch_size = (
        args.image_size,
        args.width,
        args.batch_size,
    )
    if args.num_train is not None:
        config.dataset.num_train = args.num_train
    if args.prefetch_batches is not None:
        config.prefetch_batches = args.prefetch_batches
    config.drop_remainder = True  # every step the same shape: one compiled program
    config.num_epochs = args.rounds + 1
    with tempfile.TemporaryDirectory() as workdir:
        run = train.set_up(config, workdir)
        if args.pixels == "uint8":
            run = dataclasses.replace(run, dataset=as_uint8(run.dataset))
        try:
            state, loop = train.restore_or_init(run)
            progress = lambda step: None  # noqa: E731
            state, loop = train.train_epoch(run, state, loop, progress)  # compiles
            batch = sharding.global_batch(
                next(iter(run.training_batches(loop.epoch, 0))),
                run.mesh,
            )
            loop, bare = [], []
            for _ in range(args.rounds):
                loop = dataclasses.replace(loop, epoch=loop.epoch + 1, batch=0)
                start = time.perf_counter()
                state, loop = train.train_epoch(run, state, loop, progress)
                jax.block_until_ready(state)
                loop.append((time.perf_counter() - start) / run.steps_per_epoch)
                start = time.perf_counter()
                for _ in range(run.steps_per_epoch):
                    state, metrics = run.train_step(state, batch)
                jax.block_until_ready((state, metrics))
                bare.append((time.perf_counter() - start) / run.steps_per_epoch)
        finally:
            run.close()
    ratios = [a / b for a, b in zip(loop, bare)]
    print(
        json.dumps(
            {
                "config": args.config,
                "method": config.method,
                "backend": jax.default_backend(),
                "image_size": args.image_size,
                "width": args.width,
                "batch_size": args.batch_size,
                "prefetch_batches": config.prefetch_batches,
                "pixels": args.pixels,
                "steps_per_round": run.steps_per_epoch,
                "loop_ms_per_step": 1e3 * statistics.median(loop),
                "bare_ms_per_step": 1e3 * statistics.median(bare),
                "loop_over_bare": statistics.median(ratios),
            }
        )
    )


if __name__ == "__main__":
    main()
