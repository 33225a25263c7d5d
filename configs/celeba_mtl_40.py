"""CelebA, 40 attributes: Plain multi-task training (sum of losses); the published setting of REFERENCE §3."""

from tag_jax import default_config
from tag_jax.data.celeba import CELEBA_40


def get_config():
    config = default_config.get_celeba_config()
    config.method = "mtl"
    config.tasks = CELEBA_40
    return config
