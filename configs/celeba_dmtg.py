"""DMTG on CelebA, the published setting (REFERENCE §3, §6): 9 tasks, 64x64, K = 3 groups.

Adam 8e-4, batch 256, 100 epochs, lr halved every 15 epochs, soft Gumbel-softmax
at constant temperature 2.5, no early stopping. Other K: --config.dmtg.num_groups=K.
"""

from tag_jax import default_config


def get_config():
  config = default_config.get_base_config()
  config.method = "dmtg"
  config.dataset.name = "celeb_a"
  config.tasks = ()  # the 9 default tasks
  config.image_size = 64
  config.model.width = 64
  config.batch_size = 256
  config.num_epochs = 100
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 8e-4
  config.optimizer.schedule = "step"
  config.optimizer.decay_every_epochs = 15
  config.optimizer.decay_factor = 0.5
  config.early_stopping.patience = 0
  config.early_stopping.restore_best = False  # report the network of the final grouping
  config.dmtg.num_groups = 3
  config.dmtg.tau_schedule = "constant"
  config.dmtg.tau = 2.5
  config.dmtg.hard = False
  config.dmtg.shared_stem = "none"
  return config
