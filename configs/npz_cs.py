"""CS (gradient cosine similarity, TAG's cheaper baseline) on your own data (.npz): the
npz_mtl.py recipe (measured on the 'digits' dataset), the similarity recorded every 10 steps
(config.affinity defaults), then groups for k = 2 and 3."""

from tag_jax import default_config


def get_config():
    config = default_config.get_npz_config()
    config.method = "cs"
    return config
