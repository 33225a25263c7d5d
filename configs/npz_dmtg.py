"""DMTG (one-shot grouping by a Gumbel-softmax assignment to K = 3 branches) on your own data
(.npz): the npz_mtl.py recipe (measured on the 'digits' dataset) without early stopping,
reporting the final network and its grouping, as DMTG's own training does (faithful DMTG:
soft assignment, constant tau 2.5; configs/synthetic_dmtg_robust.py lists the robust options)."""

from tag_jax import default_config


def get_config():
    config = default_config.get_npz_config()
    config.method = "dmtg"
    config.dmtg.num_groups = 3
    config.update(default_config.DMTG_NPZ_TRAINING)
    return config
