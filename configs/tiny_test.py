"""A seconds-long run for tests: 8x8 synthetic images, 4 filters, 2 epochs."""

from tag_jax import default_config


def get_config():
    config = default_config.get_synthetic_config()
    config.dataset.num_train = 96
    config.dataset.num_validation = 32
    config.dataset.num_test = 32
    config.image_size = 8
    config.dataset.group_sizes = (2, 2)
    config.model.width = 4
    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_epochs = 2
    config.log_every_steps = 2
    config.affinity.every_n_steps = 2
    # HOA's 10 networks vmapped: a run of a few steps compiles them in seconds ('auto' unrolls
    # them on CPU, which compiles for ~20 s and pays off only over hundreds of steps).
    config.groups.network_strategy = "vmap"
    return config
