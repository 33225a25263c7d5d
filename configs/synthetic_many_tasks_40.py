"""TAG with 40 tasks in 4 planted groups of 10 on the offline synthetic data ('first_order'
estimator), then the selection of 4 groups: configs/synthetic_many_tasks.py's setting at 40
tasks (the middle row of benchmarks/affinity_estimators.py).
"""

from tag_jax import default_config


def get_config():
  config = default_config.get_synthetic_config()
  config.method = "tag"
  config.dataset.group_sizes = (10,) * 4
  config.dataset.num_train = 8192
  config.model.width = 32
  config.optimizer.learning_rate = 0.02  # the loss sums 40 tasks
  config.num_epochs = 12
  config.log_every_steps = 100
  config.affinity.every_n_steps = 10
  config.affinity.lookahead = "sgd"
  config.affinity.scale_by_lr = False
  config.affinity.estimator = "first_order"
  config.selection.max_groups = (4,)
  return config
