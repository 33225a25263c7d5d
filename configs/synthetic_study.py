"""The grouping study on the offline synthetic dataset (quick-start setting), k = 2 and 3.

Six epochs per run (the quick start trains eight) keep one seed of the study, whose HOA stage
alone trains 45 networks, within about 12 minutes on 2 CPU cores; the 3 seeds take three times
that (--config.study.seeds=1 for one).
"""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.num_epochs = 6
    config.study.seeds = 3  # every row: mean ± spread over 3 seeds
    # DMTG searches with its own training (Adam, no early stopping), as configs/synthetic_dmtg.py.
    config.study.overrides.dmtg = default_config.DMTG_SYNTHETIC_TRAINING
    return config
