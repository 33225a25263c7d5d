"""End to end on the synthetic dataset: TAG and CS find the planted task groups."""

import json
import os

import numpy as np
import pytest
from conftest import load_config

from tag_jax import train
from tag_jax.data import synthetic


def small_synthetic(method):
    """The quick-start setting, shrunk: 3 planted groups of 2 tasks, 1,536 images, 4 epochs."""
    config = load_config(f"synthetic_{method}")
    config.dataset.group_sizes = (2, 2, 2)
    config.dataset.num_train = 1536
    config.num_epochs = 4
    config.early_stopping.patience = 0
    config.affinity.every_n_steps = 4
    config.selection.max_groups = (3,)
    config.mesh.data = 1
    return config


@pytest.mark.parametrize("method", ["tag", "cs"])
def test_affinity_is_higher_within_planted_groups_and_selection_recovers_them(tmp_path, method):
    config = small_synthetic(method)
    train.train_and_evaluate(config, str(tmp_path))
    matrix = np.array(json.load(open(os.path.join(tmp_path, "affinity.json")))["matrix"])
    group = np.repeat(np.arange(3), 2)
    within = (group[:, None] == group[None]) & ~np.eye(6, dtype=bool)
    across = group[:, None] != group[None]
    assert matrix[within].mean() > 3 * max(matrix[across].mean(), 0) + 1e-6
    assert matrix[within].min() > matrix[across].mean()
    chosen = json.load(open(os.path.join(tmp_path, "groups.json")))["selections"][0]["groups"]
    assert sorted(map(tuple, chosen)) == sorted(synthetic.planted_groups((2, 2, 2)))
