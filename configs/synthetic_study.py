"""The grouping study on the offline synthetic dataset (quick-start setting), k = 2 and 3.

Six epochs per run (the quick start trains eight) keep the whole study, whose HOA stage alone
trains 45 networks, within about 12 minutes on 2 CPU cores.
"""

from tag_jax import default_config


def get_config():
  config = default_config.get_synthetic_config()
  config.num_epochs = 6
  config.study.methods = ("mtl", "single", "tag", "cs", "hoa", "random", "uw", "gradnorm",
                          "pcgrad", "dmtg")
  config.study.max_groups = (2, 3)
  # DMTG searches with its own training (Adam, no early stopping), as configs/synthetic_dmtg.py.
  config.study.overrides.dmtg = default_config.DMTG_SYNTHETIC_TRAINING
  return config
