"""PCGrad on uncertainty-weighted losses (the TAG CelebA code's form) on the synthetic data."""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.method = "pcgrad"
    config.baselines.pcgrad_uncertainty = True
    return config
