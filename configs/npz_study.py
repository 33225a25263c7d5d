"""The grouping study on your own data (.npz): every method trained with the npz_mtl.py recipe
(measured on the 'digits' dataset), k = 2 and 3, 3 seeds; DMTG searches with the same Adam
without early stopping, reporting its final grouping (configs/npz_dmtg.py)."""

from tag_jax import default_config


def get_config():
    config = default_config.get_npz_config()
    config.study.seeds = 3  # every row: mean ± spread over 3 seeds
    config.study.overrides.dmtg = default_config.DMTG_NPZ_TRAINING
    return config
