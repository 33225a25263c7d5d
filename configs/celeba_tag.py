"""TAG on CelebA's 9 attributes, the affinity as the TAG CelebA code computes it
(use_tag_celeba_code_affinity), in the published CelebA setting
(docs/reference.md#celeba-setting)."""

from tag_jax import default_config


def get_config():
    config = default_config.get_celeba_config()
    config.method = "tag"
    default_config.use_tag_celeba_code_affinity(config)
    config.selection.max_groups = (2, 3, 4)
    return config
