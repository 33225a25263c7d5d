"""DMTG with the robust options that find the planted groups of the synthetic study (the
lookahead on every 2nd example, probe heads, a balance term, Θ's own Adam), else as
synthetic_dmtg.py; what each option does and what it recovers: docs/dmtg.md.
"""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_dmtg_config()
    config.dmtg.probe_heads = True
    config.dmtg.balance_weight = 0.1
    config.dmtg.logits_optimizer = "adam"
    config.dmtg.logits_learning_rate = 0.03
    config.dmtg.lookahead_weight = 0.6
    config.dmtg.lookahead_subsample = 2
    return config
