"""TAG at scale: 100 tasks in 10 planted groups of 10 on the offline synthetic data, with the
'first_order' affinity estimator (no lookahead forwards; `--config.affinity.estimator=sketched`
makes the measured step's cost independent of T), then the selection of 10 groups.

  python -m tag_jax.main --config=configs/synthetic_many_tasks.py --workdir=runs/many_tasks

Differs from the quick start where 100 tasks need it: the loss is a sum over tasks, so the
learning rate is lower (0.02); a wider trunk (32 filters), twice the training images and up to
12 epochs give the ten textures' features room. Logged every 100 steps (100 tasks per line).
"""

from tag_jax import default_config


def get_config():
  config = default_config.get_synthetic_config()
  config.method = "tag"
  config.dataset.group_sizes = (10,) * 10
  config.dataset.num_train = 8192
  config.model.width = 32
  config.optimizer.learning_rate = 0.02
  config.num_epochs = 12
  config.log_every_steps = 100
  config.affinity.every_n_steps = 10
  config.affinity.lookahead = "sgd"
  config.affinity.scale_by_lr = False
  config.affinity.estimator = "first_order"
  config.selection.max_groups = (10,)
  return config
