"""HOA on the offline synthetic dataset: every pair and single task trained (45 networks), then
groups.json selected on the validation losses for k = 2 and 3."""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.method = "pairs"
    config.groups.hoa_score = "loss"
    return config
