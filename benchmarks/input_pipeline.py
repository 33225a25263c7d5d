"""Examples/s of the CelebA input pipeline alone (read, decode, resize, batch) per worker count.

  python benchmarks/input_pipeline.py [--data_dir DIR] [--workers 1 2 4] [--batch_size 256]
      [--image_size 64] [--num_batches 8] [--repeats 3]

Without --data_dir it reads `celeba.mock_celeba` examples: CelebA's feature spec with
218x178x3 uint8 images drawn at random on every read (TFDS's mock hands them over decoded, so
no JPEG decoding is measured). With --data_dir it reads a prepared celeb_a
(data/prepare_celeba.md), JPEG decoding included. `pipeline_examples_per_second` takes any
`Dataset`; the last line puts it next to the plain MTL training step's examples/s on the
same batch and image size (9 tasks, the CelebA trunk of width 64).
"""

import argparse
import itertools
import time

import jax
import numpy as np

from affinity_step import random_batch, time_step  # benchmarks/ is the script's folder
from tag_jax import models, optim, steps
from tag_jax.data import celeba
from tag_jax.default_config import get_base_config


def pipeline_examples_per_second(dataset, *, batch_size: int, num_batches: int, repeats: int,
                                 split: str = "train") -> float:
  """Median over `repeats` epochs of real (unpadded) examples/s in the first `num_batches` batches.

  Each epoch's time starts before its iterator is created, so it includes filling the pipeline.
  """
  rates = []
  for epoch in range(repeats):
    start = time.perf_counter()
    batches = dataset.batches(split, batch_size=batch_size, seed=0, epoch=epoch, shuffle=True,
                              drop_remainder=False)
    examples = sum(float(b["mask"].sum()) for b in itertools.islice(batches, num_batches))
    rates.append(examples / (time.perf_counter() - start))
  return float(np.median(rates))


def training_examples_per_second(*, batch_size: int, image_size: int, repeats: int,
                                 num_tasks: int = 9) -> float:
  """Examples/s of the jitted plain MTL step (median of `repeats`) on random data."""
  config = get_base_config()
  model = models.create_model(config, num_tasks)
  optimizer = optim.create_optimizer(config, steps_per_epoch=100)
  state = steps.init_train_state(model, optimizer, jax.random.key(0),
                                 (image_size, image_size, 3))
  batch = random_batch(num_tasks, image_size, batch_size)
  _, seconds, _ = time_step(steps.make_mtl_step(model, optimizer), state, batch, repeats)
  return batch_size / seconds


def measure(args) -> list[tuple[int, float]]:
  """(workers, examples/s) for each of `args.workers`."""
  config = get_base_config()
  config.dataset.name = "celeb_a"
  config.dataset.data_dir = args.data_dir
  config.image_size = args.image_size
  rows = []
  for workers in args.workers:
    config.dataset.num_workers = workers
    rate = pipeline_examples_per_second(celeba.load(config), batch_size=args.batch_size,
                                        num_batches=args.num_batches, repeats=args.repeats)
    rows.append((workers, rate))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=None,
                      help="prepared celeb_a TFDS data dir ('' = TFDS default); omit for mock data")
  parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--num_batches", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  if args.data_dir is None:
    args.data_dir = ""
    with celeba.mock_celeba(args.batch_size * args.num_batches):
      rows = measure(args)
    source = "mock data (no JPEG decoding)"
  else:
    rows = measure(args)
    source = f"prepared celeb_a in {args.data_dir or 'the TFDS default data dir'}"
  print(f"CelebA input pipeline, {source}: batch {args.batch_size}, image {args.image_size}, "
        f"median of {args.repeats} epochs x {args.num_batches} batches")
  print("workers  examples/s  ms/batch")
  for workers, rate in rows:
    print(f"{workers:7d}  {rate:10.0f}  {1000 * args.batch_size / rate:8.0f}")
  train_rate = training_examples_per_second(batch_size=args.batch_size,
                                            image_size=args.image_size, repeats=args.repeats)
  print(f"training step (plain MTL, {jax.default_backend()}): {train_rate:.0f} examples/s; "
        f"pipeline / training = {max(r for _, r in rows) / train_rate:.1f}x")


if __name__ == "__main__":
  main()
