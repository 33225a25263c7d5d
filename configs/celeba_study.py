"""The grouping study on CelebA's 9 attributes in the published setting, k = 2, 3, 4: TAG's
affinity as the TAG CelebA code computes it, DMTG's search with its own published training
(docs/reference.md#celeba-setting). Days of compute on a GPU/TPU; not for CPUs.
"""

from tag_jax import default_config


def get_config():
    config = default_config.get_celeba_config()
    default_config.use_tag_celeba_code_affinity(config)
    config.study.methods = (
        "mtl",
        "single",
        "tag",
        "cs",
        "hoa",
        "random",
        "uw",
        "gradnorm",
        "pcgrad",
        "dmtg",
    )
    config.study.max_groups = (2, 3, 4)
    config.study.overrides.dmtg = default_config.DMTG_CELEBA_TRAINING
    return config
