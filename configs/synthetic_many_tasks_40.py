"""TAG with 40 tasks in 4 planted groups of 10 on the offline synthetic data ('first_order'
estimator), then the selection of 4 groups: configs/synthetic_many_tasks.py's setting at 40
tasks (the middle row of benchmarks/affinity_estimators.py).
"""

from tag_jax import default_config


def get_config():
    return default_config.get_many_tasks_config(4)
