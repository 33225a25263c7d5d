"""All tasks in one network (sum of losses) on all 40 CelebA attributes, in the published CelebA
setting (docs/reference.md#celeba-setting)."""

from tag_jax import default_config
from tag_jax.data.celeba import CELEBA_40


def get_config():
    config = default_config.get_celeba_config()
    config.method = "mtl"
    config.tasks = CELEBA_40
    return config
