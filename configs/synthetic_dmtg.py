"""DMTG on the offline synthetic dataset: K = 2 branches for the 2 planted groups of 3 tasks.

Tuned so that arg-max Θ recovers the planted groups reliably within one short epoch:
- 2-filter trunks: one branch cannot serve both groups' gratings well, so sharing a
  branch across groups costs loss (with wider trunks every partition fits and the
  choice is left to chance);
- 16,384 fresh examples, one pass: with a few thousand examples repeated, the heads
  memorise the training set and Θ follows memorisation, not shared features.
Recovered the planted groups for 12 of 12 seeds (config.seed 0-11) in tuning.
"""

from tag_jax import default_config


def get_config():
    return default_config.get_synthetic_dmtg_config()
