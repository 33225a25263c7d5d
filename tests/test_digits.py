"""The offline real dataset 'digits': arrays, tasks and split, and that the npz recipe learns it."""

import numpy as np
import pytest
from conftest import load_config

from tag_jax import data, train
from tag_jax.data import digits


def test_digits_are_one_vs_rest_tasks_on_a_fixed_split():
    config = load_config("npz_mtl")
    config.dataset.name, config.image_size = "digits", 8
    dataset = data.load_dataset(config)
    assert dataset.task_names == tuple(f"digit_{d}" for d in range(10))
    assert dataset.image_shape == (8, 8, 1)
    sizes = {split: dataset.num_examples(split) for split in ("train", "validation", "test")}
    assert sizes == {"train": 1437, "validation": 179, "test": 181}
    for images, labels in dataset.splits.values():
        np.testing.assert_array_equal(labels.sum(1), 1)  # exactly one digit per image
        assert images.min() >= 0.0 and images.max() <= 1.0
    images, _ = digits.arrays(16)
    assert images.shape == (1797, 16, 16, 1)


def test_the_npz_recipe_learns_the_digits_far_below_always_no(tmp_path):
    config = load_config("npz_mtl")
    config.dataset.name, config.image_size, config.mesh.data = "digits", 8, 1
    config.min_train_steps = 400  # of the recipe's 1,000
    results = train.train_and_evaluate(config, str(tmp_path / "digits"))
    positives = data.load_dataset(config).splits["test"][1].mean(0)
    always_no = float((100 * positives).sum())  # Total Error of answering "no" everywhere
    assert 90 < always_no < 110
    assert results["test"]["total_error"] < always_no / 3
    assert results["majority_baseline"]["classes"] == [0] * 10  # "no" is every task's majority
    assert results["majority_baseline"]["test"]["total_error"] == pytest.approx(always_no)
    assert results["learned"]


def test_a_run_that_cannot_learn_ends_with_the_warning(tmp_path, capsys):
    config = load_config("npz_mtl")
    config.dataset.name, config.image_size, config.mesh.data = "digits", 8, 1
    config.num_epochs, config.min_train_steps, config.optimizer.learning_rate = 1, 0, 1e-9
    results = train.train_and_evaluate(config, str(tmp_path / "frozen"))
    assert not results["learned"]
    assert (
        results["validation"]["total_error"]
        > 0.9 * results["majority_baseline"]["validation"]["total_error"]
    )
    assert "WARNING: the run did not learn" in capsys.readouterr().out
