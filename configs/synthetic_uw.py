"""Uncertainty weighting (a learned log-sigma per task) on the offline synthetic dataset."""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.method = "uw"
    return config
