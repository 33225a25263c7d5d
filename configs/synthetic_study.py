"""The grouping study on the offline synthetic dataset (quick-start setting), k = 2 and 3."""

from tag_jax import default_config


def get_config():
  config = default_config.get_synthetic_config()
  config.study.methods = ("mtl", "single", "tag", "cs", "hoa", "random", "uw", "gradnorm",
                          "pcgrad", "dmtg")
  config.study.max_groups = (2, 3)
  return config
