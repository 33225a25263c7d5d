"""Plain multi-task training (all tasks, sum of losses) on the offline synthetic dataset."""

from tag_jax import default_config


def get_config():
  config = default_config.get_base_config()
  config.method = "mtl"
  config.dataset.name = "synthetic"
  config.dataset.image_size = 16
  config.model.width = 16
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_epochs = 8
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  config.optimizer.decay_every_epochs = 4
  config.early_stopping.patience = 3
  config.log_every_steps = 20
  return config
