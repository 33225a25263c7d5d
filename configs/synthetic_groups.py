"""Train chosen groups on the offline synthetic dataset: here the planted ones, one network each.

For groups chosen by TAG/CS/HOA/DMTG instead: --config.groups.groups='()'
--config.groups.groups_file=runs/tag/groups.json --config.groups.max_groups=3.
"""

from tag_jax import default_config
from tag_jax.data import synthetic


def get_config():
    config = default_config.get_synthetic_config()
    config.method = "groups"
    config.groups.groups = synthetic.planted_groups(config.dataset.group_sizes)
    return config
