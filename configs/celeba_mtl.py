"""CelebA, 9 attributes: Plain multi-task training (sum of losses); the published setting of REFERENCE §3."""

from tag_jax import default_config


def get_config():
    config = default_config.get_celeba_config()
    config.method = "mtl"
    return config
