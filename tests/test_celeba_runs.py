"""The CelebA configs end to end on TFDS mock data (CelebA itself cannot be downloaded here)."""

import json
import os

import numpy as np
import pytest
from conftest import load_config

from tag_jax import train
from tag_jax.data import celeba


def shrink(config):
    """Same code path, CPU-sized: 16x16 inputs, 4 filters, 2 steps of batch 8."""
    config.image_size = 16
    config.model.width = 4
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_epochs = 1
    config.mesh.data = 1
    config.dataset.num_workers = 1
    return config


@pytest.mark.parametrize("name", ["celeba_tag", "celeba_mtl"])
def test_celeba_config_runs_two_steps_on_mock_data(tmp_path, name):
    config = shrink(load_config(name))
    with celeba.mock_celeba(num_examples=16):
        results = train.train_and_evaluate(config, str(tmp_path))
    assert results["steps"] == 2
    assert results["tasks"] == list(celeba.CELEBA_9)
    assert np.isfinite(results["test"]["loss"])
    if name == "celeba_tag":
        record = json.load(open(os.path.join(tmp_path, "affinity.json")))
        assert record["steps_recorded"] == 2  # every step, as the reference code
        assert np.array(record["matrix"]).shape == (9, 9)


def test_celeba_published_setting():
    config = load_config("celeba_tag")
    assert (config.image_size, config.model.width, config.batch_size) == (64, 64, 256)
    assert (config.optimizer.name, config.optimizer.learning_rate, config.optimizer.momentum) == (
        "sgd",
        5e-4,
        0.9,
    )
    assert (config.optimizer.decay_every_epochs, config.early_stopping.patience) == (15, 10)
    assert (
        config.affinity.lookahead,
        config.affinity.momentum,
        config.affinity.scale_by_lr,
        config.affinity.every_n_steps,
    ) == ("momentum", 1.0, True, 1)
    assert tuple(load_config("celeba_cs_40").tasks) == celeba.CELEBA_40


def test_missing_celeba_fails_before_training(tmp_path):
    config = shrink(load_config("celeba_mtl"))
    config.dataset.data_dir = str(tmp_path / "empty")
    with pytest.raises(Exception, match="prepare_celeba"):
        train.train_and_evaluate(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
