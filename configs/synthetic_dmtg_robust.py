"""DMTG with the robust options on, on the offline synthetic dataset (else as synthetic_dmtg.py).

Θ gets its own plain SGD (moves in proportion to its gradient instead of Adam's fixed step
size), a balance term keeps all K branches in use, the relaxed weights average 8 Gumbel
samples, and Θ stays put for the first 64 steps. Measured with benchmarks/dmtg_recovery.py
(README, "DMTG: faithful and robust"): on the 3-group width-16 preset these options keep every
branch in use but do NOT recover the planted groups more often than the faithful DMTG.
"""

import importlib.util
import os


def get_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic_dmtg.py")
  spec = importlib.util.spec_from_file_location("configs_synthetic_dmtg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.dmtg.logits_optimizer = "sgd"
  config.dmtg.logits_learning_rate = 3.0
  config.dmtg.balance_weight = 0.1
  config.dmtg.num_samples = 8
  config.dmtg.warmup_steps = 64
  return config
