"""TAG on the offline synthetic dataset (the quick start), the paper's form: SGD lookahead every
10 steps, no lr scaling."""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.method = "tag"
    config.affinity.every_n_steps = 10
    config.affinity.lookahead = "sgd"
    config.affinity.scale_by_lr = False
    return config
