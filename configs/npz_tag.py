"""TAG on your own data (.npz): the npz_mtl.py recipe (measured on the 'digits' dataset) with
the paper's affinity (SGD lookahead every 10 steps, unscaled), then groups for k = 2 and 3."""

from tag_jax import default_config


def get_config():
    config = default_config.get_npz_config()
    config.method = "tag"
    config.affinity.every_n_steps = 10
    config.affinity.lookahead = "sgd"
    config.affinity.scale_by_lr = False
    return config
