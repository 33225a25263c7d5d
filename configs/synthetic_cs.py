"""CS (gradient cosine similarity of conv/dense kernels) on the offline synthetic dataset."""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.method = "cs"
    config.affinity.every_n_steps = 10
    config.affinity.kernels_only = True
    return config
