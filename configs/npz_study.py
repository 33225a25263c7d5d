"""The grouping study on your own data (.npz): every method trained with the npz_mtl.py recipe
(measured on the 'digits' dataset), k = 2 and 3; DMTG searches with the same Adam."""

import importlib.util
import os


def get_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npz_mtl.py")
  spec = importlib.util.spec_from_file_location("configs_npz_mtl", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.study.methods = ("mtl", "single", "tag", "cs", "hoa", "random", "uw", "gradnorm",
                          "pcgrad", "dmtg")
  config.study.max_groups = (2, 3)
  return config
