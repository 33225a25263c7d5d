"""The grouping study on the offline synthetic dataset (the quick start's setting, six epochs per
run), k = 2 and 3, 3 seeds (--config.study.seeds=1 for one); its report: docs/studies.md.
"""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.num_epochs = 6
    config.study.seeds = 3  # every row: mean ± spread over 3 seeds
    # DMTG searches with its own training (Adam, no early stopping), as configs/synthetic_dmtg.py.
    config.study.overrides.dmtg = default_config.DMTG_SYNTHETIC_TRAINING
    return config
