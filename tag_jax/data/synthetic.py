"""A procedurally generated multi-task image dataset with planted task groups (offline, seeded).

Generative process (all from `data_seed`):
- G planted groups (`group_sizes`, e.g. (3, 3, 3) -> tasks 0-2, 3-5, 6-8). Group g
  owns two latent factors z_g ~ N(0, I_2) per image and two fixed random
  smooth patterns P_g1, P_g2 (blocky noise, unit RMS, all colour channels).
- Image x = sum_g (z_g1 P_g1 + z_g2 P_g2) + noise * eps, eps ~ N(0, 1) per pixel.
- Task t of group g reads only its group's factors: y_t = [z_g . u_t > 0], with
  u_t = (cos a_t, sin a_t) and the angles a_t of a group spread by at most
  0.8 rad around the group's own direction; then a fraction `label_noise` of
  labels is flipped.
So tasks in one group depend on the same latent factors (a step for one helps
the others), while tasks of different groups read disjoint factors and
patterns and only compete for the trunk's capacity. The planted grouping is
`planted_groups(group_sizes)`; grouping methods are checked against it.
"""

import numpy as np

from tag_jax.data.base import ArrayDataset

_SPLIT_STREAM = {"train": 1, "validation": 2, "test": 3}
_FACTORS_PER_GROUP = 2
_MAX_SPREAD = 0.8  # radians between a group's most different tasks


def task_names(group_sizes) -> tuple[str, ...]:
  return tuple(f"g{g}_t{i}" for g, size in enumerate(group_sizes) for i in range(size))


def planted_groups(group_sizes) -> tuple[tuple[str, ...], ...]:
  names = iter(task_names(group_sizes))
  return tuple(tuple(next(names) for _ in range(size)) for size in group_sizes)


def _world(image_size: int, group_sizes, seed: int):
  """Fixed patterns (G, 2, S, S, 3) and task directions (T, 2) -> the dataset's ground truth."""
  rng = np.random.default_rng([seed, 0])
  block = max(1, image_size // 4)
  coarse = rng.normal(size=(len(group_sizes), _FACTORS_PER_GROUP, -(-image_size // block),
                            -(-image_size // block), 3))
  patterns = coarse.repeat(block, axis=2).repeat(block, axis=3)[:, :, :image_size, :image_size]
  patterns /= np.sqrt((patterns**2).mean(axis=(2, 3, 4), keepdims=True))
  angles = []
  for size in group_sizes:
    centre = rng.uniform(0, 2 * np.pi)
    angles.extend(centre + np.linspace(-_MAX_SPREAD / 2, _MAX_SPREAD / 2, size) * (size > 1))
  directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return patterns, directions


def generate(num_examples: int, *, image_size: int, group_sizes, noise: float,
             label_noise: float, seed: int, split: str):
  """Images (N, S, S, 3) float32 and labels (N, T) int32 of one split."""
  patterns, directions = _world(image_size, group_sizes, seed)
  rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
  factors = rng.normal(size=(num_examples, len(group_sizes), _FACTORS_PER_GROUP))
  images = np.einsum("ngk,gkhwc->nhwc", factors, patterns)
  images += noise * rng.normal(size=images.shape)
  group_of_task = np.repeat(np.arange(len(group_sizes)), group_sizes)
  scores = np.einsum("ntk,tk->nt", factors[:, group_of_task], directions)
  labels = (scores > 0).astype(np.int32)
  flips = rng.random(labels.shape) < label_noise
  labels = np.where(flips, 1 - labels, labels)
  return images.astype(np.float32), labels


def load(config) -> ArrayDataset:
  ds = config.dataset
  sizes = {"train": ds.num_train, "validation": ds.num_validation, "test": ds.num_test}
  splits = {
      split: generate(n, image_size=ds.image_size, group_sizes=tuple(ds.group_sizes),
                      noise=ds.noise, label_noise=ds.label_noise, seed=ds.data_seed, split=split)
      for split, n in sizes.items()
  }
  return ArrayDataset(task_names(ds.group_sizes), splits)
