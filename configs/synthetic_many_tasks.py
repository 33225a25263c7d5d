"""TAG at scale: 100 tasks in 10 planted groups of 10 on the offline synthetic data with the
'first_order' affinity estimator, then the selection of 10 groups (docs/many_tasks.md).
"""

from tag_jax import default_config


def get_config():
    return default_config.get_many_tasks_config(10)
