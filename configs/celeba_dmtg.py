"""DMTG on CelebA's 9 attributes at 64x64 with K = 3 groups, in DMTG's published setting (Adam
8e-4, batch 256, 100 epochs, lr halved every 15 epochs, soft Gumbel-softmax at constant
temperature 2.5, no early stopping; docs/reference.md). Other K: --config.dmtg.num_groups=K.
"""

from tag_jax import default_config


def get_config():
    config = default_config.get_celeba_config()
    config.method = "dmtg"
    config.update(default_config.DMTG_CELEBA_TRAINING)
    return config
