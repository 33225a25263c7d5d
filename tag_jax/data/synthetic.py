"""A procedurally generated multi-task image dataset with planted task groups (offline, seeded).

Generative process (all from `data_seed`):
- G planted groups (`group_sizes`, e.g. (3, 3, 3) -> tasks 0-2, 3-5, 6-8). Group g
  owns a fixed texture: a colour grating of period 4 px, orientation pi * g / G
  and a random unit colour vector c_g.
- Each image draws, per group, an amplitude a_g ~ U(0, 1) and a phase
  phi_g ~ U(0, 2 pi): x = sum_g a_g cos(k_g . r + phi_g) c_g + noise * eps. The
  random phase makes a_g invisible to any linear read-out of the pixels: only
  filters tuned to the grating, rectified and pooled (what the trunk learns),
  reveal it.
- Task t of group g reads only its group's amplitude, through its own noise:
  y_t = [a_g + task_noise * e_t > 0.5], e_t ~ N(0, 1) per image and task; then a
  fraction `label_noise` of labels is flipped.
So tasks in one group need the same trunk filters (a trunk step for one helps
the others), while tasks of different groups need different filters and only
compete for the trunk's capacity. The planted grouping is
`planted_groups(group_sizes)`; grouping methods are checked against it.
"""

import numpy as np

from tag_jax.data.base import ArrayDataset

_SPLIT_STREAM = {"train": 1, "validation": 2, "test": 3}
_PERIOD = 4.0  # pixels per grating cycle


def task_names(group_sizes) -> tuple[str, ...]:
    return tuple(f"g{g}_t{i}" for g, size in enumerate(group_sizes) for i in range(size))


def planted_groups(group_sizes) -> tuple[tuple[str, ...], ...]:
    names = iter(task_names(group_sizes))
    return tuple(tuple(next(names) for _ in range(size)) for size in group_sizes)


def _textures(num_groups: int, seed: int):
    """Fixed grating wave vectors (G, 2) and unit colour vectors (G, 3): the ground truth."""
    rng = np.random.default_rng([seed, 0])
    angles = np.pi * np.arange(num_groups) / num_groups
    wave_vectors = 2 * np.pi / _PERIOD * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    colours = rng.normal(size=(num_groups, 3))
    return wave_vectors, colours / np.linalg.norm(colours, axis=1, keepdims=True)


def generate(
    num_examples: int,
    *,
    image_size: int,
    group_sizes,
    noise: float,
    task_noise: float,
    label_noise: float,
    seed: int,
    split: str,
):
    """Images (N, S, S, 3) float32 and labels (N, T) int32 of one split."""
    wave_vectors, colours = _textures(len(group_sizes), seed)
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    amplitudes = rng.uniform(size=(num_examples, len(group_sizes)))
    phases = rng.uniform(0, 2 * np.pi, size=(num_examples, len(group_sizes)))
    coords = np.stack(np.meshgrid(np.arange(image_size), np.arange(image_size), indexing="ij"), -1)
    angle = np.einsum("hwd,gd->hwg", coords, wave_vectors)[None] + phases[:, None, None, :]
    waves = amplitudes[:, None, None, :] * np.cos(angle)  # (N, S, S, G)
    images = np.einsum("nhwg,gc->nhwc", waves, colours)
    images += noise * rng.normal(size=images.shape)
    group_of_task = np.repeat(np.arange(len(group_sizes)), group_sizes)
    own_noise = task_noise * rng.normal(size=(num_examples, len(group_of_task)))
    labels = (amplitudes[:, group_of_task] + own_noise > 0.5).astype(np.int32)
    flips = rng.random(labels.shape) < label_noise
    labels = np.where(flips, 1 - labels, labels)
    return images.astype(np.float32), labels


def load(config) -> ArrayDataset:
    ds = config.dataset
    sizes = {"train": ds.num_train, "validation": ds.num_validation, "test": ds.num_test}
    splits = {
        split: generate(
            n,
            image_size=config.image_size,
            group_sizes=tuple(ds.group_sizes),
            noise=ds.noise,
            task_noise=ds.task_noise,
            label_noise=ds.label_noise,
            seed=ds.data_seed,
            split=split,
        )
        for split, n in sizes.items()
    }
    return ArrayDataset(task_names(ds.group_sizes), splits)
