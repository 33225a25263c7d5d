"""TAG on your own data (.npz): the npz_mtl.py recipe (measured on the 'digits' dataset) with
the paper's affinity (SGD lookahead every 10 steps, unscaled), then groups for k = 2 and 3."""

import importlib.util
import os


def get_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npz_mtl.py")
  spec = importlib.util.spec_from_file_location("configs_npz_mtl", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.method = "tag"
  config.affinity.every_n_steps = 10
  config.affinity.lookahead = "sgd"
  config.affinity.scale_by_lr = False
  return config
