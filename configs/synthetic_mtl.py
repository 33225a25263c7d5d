"""Plain multi-task training (all tasks, sum of losses) on the offline synthetic dataset."""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.method = "mtl"
    return config
