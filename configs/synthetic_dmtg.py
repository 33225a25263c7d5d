"""DMTG on the offline synthetic dataset: K = 2 branches for the 2 planted groups of 3 tasks,
with 2-filter trunks and fresh examples seen once so that arg-max Θ recovers the planted groups
(why, and how reliably: docs/dmtg.md).
"""

from tag_jax import default_config


def get_config():
    return default_config.get_synthetic_dmtg_config()
