"""'digits': a real multi-task image dataset that works offline.

The UCI optical-recognition handwritten digits (Alpaydin & Kaynak, 1998) as
scikit-learn ships them inside its package (`sklearn.datasets.load_digits`: read
from the installed files, nothing is downloaded): 1,797 grey 8x8 images of the
digits 0-9 written by 43 people. Tasks: `digit_0` ... `digit_9`, "is this the
digit d?" (one-vs-rest, about 10% positives each), so a classifier that always
answers "no" scores a Total Error of about 100. Images are scaled to [0, 1]
and resized (bilinear) to config.image_size; the split is the npz default,
a fixed 80/10/10 permutation.
"""

import numpy as np

from tag_jax.data import npz
from tag_jax.data.base import ArrayDataset
from tag_jax.data.celeba import resize_image

TASK_NAMES = tuple(f"digit_{d}" for d in range(10))


def arrays(image_size: int):
    """(images (N, S, S, 1) float32 in [0, 1], labels (N, 10) int32 one-vs-rest)."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # 0..16 -> 0..255
    images = np.stack([resize_image(image, image_size) for image in grey])
    labels = (digits.target[:, None] == np.arange(10)[None, :]).astype(np.int32)
    return images, labels


def load(config) -> ArrayDataset:
    images, labels = arrays(config.image_size)
    split = npz.default_split(len(labels))
    return ArrayDataset(
        TASK_NAMES,
        {
            name: (images[split == i], labels[split == i])
            for i, name in enumerate(("train", "validation", "test"))
        },
    )
