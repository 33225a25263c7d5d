"""GradNorm (task weights balancing gradient norms, alpha 0.1) on the offline synthetic data."""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.method = "gradnorm"
    config.baselines.gradnorm_alpha = 0.1
    return config
