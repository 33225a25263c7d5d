"""TAG on all 40 CelebA attributes, the affinity as the TAG CelebA code computes it
(use_tag_celeba_code_affinity), in the published CelebA setting
(docs/reference.md#celeba-setting)."""

from tag_jax import default_config
from tag_jax.data.celeba import CELEBA_40


def get_config():
    config = default_config.get_celeba_config()
    config.method = "tag"
    config.tasks = CELEBA_40
    default_config.use_tag_celeba_code_affinity(config)
    config.selection.max_groups = (2, 3, 4, 5)
    # 40 lookahead sources: lax.map bounds memory and was measured 2x faster than unrolling on CPU.
    config.affinity.strategy = "map"
    return config
