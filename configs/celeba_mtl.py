"""All tasks in one network (sum of losses) on CelebA's 9 attributes, in the published CelebA
setting (docs/reference.md#celeba-setting)."""

from tag_jax import default_config


def get_config():
    config = default_config.get_celeba_config()
    config.method = "mtl"
    return config
