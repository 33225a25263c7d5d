"""All tasks in one network on your own data (.npz, README "Bring your own data"): the recipe
chosen on the offline 'digits' dataset (what was measured: docs/data.md). Use
--config.dataset.path=my.npz; for the digits: --config.dataset.name=digits --config.image_size=8.
"""

from tag_jax import default_config


def get_config():
    config = default_config.get_npz_config()
    config.method = "mtl"
    return config
