"""What a run checks before it touches its workdir: the config's values, the data, the length.

`validate_config` (every block's schema and rules, before any data is read or code compiled),
`load_checked_data` (the dataset and its steps per epoch), `with_training_length`
(config.min_train_steps) and `validate_run_length` (a measuring method gets more than step 0).
"""

import math

import ml_collections
from absl import logging

from tag_jax import config_checks, data, default_config, methods, models
from tag_jax.data import pipeline
from tag_jax.errors import UserError
from tag_jax.methods.base import Method


def validate_config(config: ml_collections.ConfigDict) -> None:
    """UserError for values no run can use, before any data is read or code compiled: the common
    blocks' schemas and rules (tag_jax.default_config), then the method's (methods.validate)."""
    config_checks.check(config, default_config.COMMON_BLOCKS)
    methods.validate(config)


def validate_run_length(config, method: Method, steps_per_epoch: int) -> None:
    """UserError when a method that measures every n steps would measure at step 0 only."""
    total = config.num_epochs * steps_per_epoch
    if method.measured_step and method.measure_every >= total > 1:
        raise UserError(
            f"config.affinity.every_n_steps={method.measure_every} is not below the run's "
            f"{total} steps: only step 0 would be measured; lower it (or train longer)"
        )


def with_training_length(config, steps_per_epoch: int):
    """config, with num_epochs raised (in a copy) until the epochs hold config.min_train_steps."""
    epochs = max(config.num_epochs, math.ceil(config.min_train_steps / steps_per_epoch))
    if epochs == config.num_epochs:
        return config
    logging.info(
        "config.min_train_steps=%d: training %d epochs of %d steps (config.num_epochs=%d).",
        config.min_train_steps,
        epochs,
        steps_per_epoch,
        config.num_epochs,
    )
    config = config.copy_and_resolve_references()
    config.num_epochs = epochs
    return config


def load_checked_data(config):
    """(dataset, steps_per_epoch); UserError for an empty split or a batch larger than the
    training split."""
    dataset = data.load_dataset(config)
    models.check_image_shape(dataset.image_shape)
    empty = [split for split in pipeline.SPLITS if dataset.num_examples(split) < 1]
    if empty:
        raise UserError(
            f"the {' and '.join(empty)} split(s) of config.dataset.name="
            f"{config.dataset.name!r} hold no examples: training, validation and test "
            f"each need at least one (give the dataset more examples)"
        )
    steps_per_epoch = pipeline.num_batches(
        dataset.num_examples("train"), config.batch_size, config.drop_remainder
    )
    if steps_per_epoch < 1:
        raise UserError(
            f"config.batch_size {config.batch_size} is larger than the training split "
            f"({dataset.num_examples('train')} examples) with drop_remainder"
        )
    return dataset, steps_per_epoch
