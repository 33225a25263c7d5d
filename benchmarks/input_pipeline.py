"""Examples/s of the CelebA input pipeline alone: from the uint8 cache and from the source.

  python benchmarks/input_pipeline.py [--data_dir DIR] [--cache_dir DIR] [--batch_size 256]
      [--image_size 64] [--num_batches 8] [--repeats 3] [--workers N] [--no_train_step]

Without --data_dir it reads `celeba.mock_celeba` examples: CelebA's feature spec with
218x178x3 uint8 images drawn at random (TFDS's mock hands them over decoded, so the source
number has no JPEG decoding in it: real JPEGs are slower). With --data_dir it reads a prepared
celeb_a (data/prepare_celeba.md), JPEG decoding included. The cache (tag_jax.data.celeba_cache)
is built first if it does not exist (its build rate is printed too); --cache_dir defaults to a
temporary folder for mock data and to config.dataset.cache_dir's default ('' = next to the TFDS
data) for real data. `pipeline_examples_per_second` takes any `Dataset`. Unless
--no_train_step, the plain MTL training step's examples/s on the same batch and image size is
printed next to them (9 tasks, the CelebA trunk of width 64). The last line is one JSON object.
"""

import argparse
import contextlib
import functools
import itertools
import json
import os
import tempfile
import time

import jax
import numpy as np
from affinity_step import random_batch, time_step  # benchmarks/ is the script's folder

from tag_jax import methods
from tag_jax.data import celeba
from tag_jax.default_config import get_base_config


def pipeline_examples_per_second(
    dataset, *, batch_size: int, num_batches: int, repeats: int, split: str = "train"
) -> float:
    """Median over `repeats` epochs of real (unpadded) examples/s in the first `num_batches`
    batches.

    Each epoch's time starts before its iterator is created, so it includes filling the pipeline.
    """
    rates = []
    for epoch in range(repeats):
        start = time.perf_counter()
        batches = dataset.batches(
            split, batch_size=batch_size, seed=0, epoch=epoch, shuffle=True, drop_remainder=False
        )
        examples = sum(float(b["mask"].sum()) for b in itertools.islice(batches, num_batches))
        rates.append(examples / (time.perf_counter() - start))
    return float(np.median(rates))


def training_examples_per_second(
    *, batch_size: int, image_size: int, repeats: int, num_tasks: int = 9
) -> float:
    """Examples/s of the jitted plain MTL step (median of `repeats`) on random data."""
    config = get_base_config()
    config.method = "mtl"
    shape = (image_size, image_size, 3)
    method = methods.build(config, [f"t{i}" for i in range(num_tasks)], shape, steps_per_epoch=100)
    state = jax.jit(method.init_state)(jax.random.key(0))
    batch = random_batch(num_tasks, image_size, batch_size)
    _, seconds, _ = time_step(method.train_step, state, batch, repeats, method.compiler_options)
    return batch_size / seconds


def celeba_config(data_dir: str, image_size: int, workers: int, cache_dir: str):
    config = get_base_config()
    config.dataset.name = "celeb_a"
    config.dataset.data_dir = data_dir
    config.dataset.num_workers = workers
    config.dataset.cache_dir = cache_dir
    config.image_size = image_size
    return config


def measure(
    *,
    data_dir: str,
    cache_dir: str,
    image_size: int,
    batch_size: int,
    num_batches: int,
    repeats: int,
    workers: int,
) -> dict:
    """examples/s from the source (no cache), the cache's build and from the cache."""
    rate = functools.partial(
        pipeline_examples_per_second,
        batch_size=batch_size,
        num_batches=num_batches,
        repeats=repeats,
    )
    source = celeba.load(celeba_config(data_dir, image_size, workers, "none"))
    result = {"source_examples_per_s": rate(source)}
    start = time.perf_counter()
    cached = celeba.load(celeba_config(data_dir, image_size, workers, cache_dir))
    seconds = time.perf_counter() - start
    built = sum(cached.num_examples(s) for s in ("train", "validation", "test"))
    result["cache_load_seconds"] = seconds
    result["cache_build_examples_per_s"] = built / seconds  # 0 s to open: the cache existed
    result["cache_examples_per_s"] = rate(cached)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data_dir",
        default=None,
        help="prepared celeb_a TFDS data dir ('' = TFDS default); omit for mock data",
    )
    parser.add_argument(
        "--cache_dir",
        default=None,
        help="cache folder (default: temporary for mock data, else next to the data)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help="source reader threads (config.dataset.num_workers)",
    )
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--num_batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_train_step", action="store_true")
    args = parser.parse_args()
    mock = args.data_dir is None
    with contextlib.ExitStack() as stack:
        if mock:
            stack.enter_context(celeba.mock_celeba(args.batch_size * args.num_batches))
            cache_dir = args.cache_dir or stack.enter_context(tempfile.TemporaryDirectory())
        else:
            cache_dir = args.cache_dir or ""
        result = measure(
            data_dir=args.data_dir or "",
            cache_dir=cache_dir,
            image_size=args.image_size,
            batch_size=args.batch_size,
            num_batches=args.num_batches,
            repeats=args.repeats,
            workers=args.workers,
        )
    data = "mock (no JPEG decoding)" if mock else f"celeb_a in {args.data_dir or 'TFDS default'}"
    result = {
        "data": data,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "source_workers": args.workers,
        "cores": os.cpu_count(),
        **result,
    }
    print(
        f"CelebA input pipeline, {result['data']}: batch {args.batch_size}, image "
        f"{args.image_size}, median of {args.repeats} epochs x {args.num_batches} batches"
    )
    print(f"  source ({args.workers} threads): {result['source_examples_per_s']:9.0f} examples/s")
    print(
        f"  cache  ({os.cpu_count()} threads): {result['cache_examples_per_s']:9.0f} examples/s "
        f"(loaded in {result['cache_load_seconds']:.1f} s)"
    )
    if not args.no_train_step:
        train_rate = training_examples_per_second(
            batch_size=args.batch_size, image_size=args.image_size, repeats=args.repeats
        )
        result["train_step_examples_per_s"] = train_rate
        print(f"  training step (plain MTL, {jax.default_backend()}): {train_rate:.0f} examples/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
