"""CS (gradient cosine similarity of the kernels, every step, as the TAG CelebA code) on all 40
CelebA attributes, in the published CelebA setting (docs/reference.md#celeba-setting)."""

from tag_jax import default_config
from tag_jax.data.celeba import CELEBA_40


def get_config():
    config = default_config.get_celeba_config()
    config.method = "cs"
    config.tasks = CELEBA_40
    config.affinity.every_n_steps = 1
    config.selection.max_groups = (2, 3, 4, 5)
    return config
