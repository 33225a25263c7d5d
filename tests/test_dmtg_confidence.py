"""DMTG's confidence: groupings drawn from softmax(Θ) at epoch ends of the search, against closed
forms; the window of epoch ends; a tiny run's groups.json."""

import itertools
import json
import os
import types

import ml_collections
import numpy as np
import pytest
from conftest import load_config

from selection import confidence
from tag_jax import train
from tag_jax.methods import dmtg_confidence, dmtg_outputs


def draws(num_samples, seed=0, epochs=0):
    return ml_collections.ConfigDict({"num_samples": num_samples, "seed": seed, "epochs": epochs})


def partition_probability(p, groups, task_names):
    """P(the tasks, each drawing its group from its row of p (N, K), form exactly `groups`): the
    sum over every injective map of groups to K labels of the product of the members' chances."""
    index = {t: i for i, t in enumerate(task_names)}
    total = 0.0
    for labels in itertools.permutations(range(p.shape[1]), len(groups)):
        total += np.prod([p[index[t], k] for group, k in zip(groups, labels) for t in group])
    return total


def test_two_tasks_share_a_group_with_the_chance_their_draws_agree():
    """p = [[0.9, 0.1], [0.8, 0.2]]: together with 0.9 x 0.8 + 0.1 x 0.2 = 0.74, apart 0.26."""
    p = np.array([[[0.9, 0.1], [0.8, 0.2]]])
    fields = dmtg_confidence.assignment_confidence(("a", "b"), [["a", "b"]], p, draws(20000))
    assert fields["confidence"] == pytest.approx(0.74, abs=0.01)
    (apart,) = fields["alternatives"]
    assert apart["groups"] == [["a"], ["b"]] and apart["share"] == pytest.approx(0.26, abs=0.01)
    np.testing.assert_allclose(fields["co_membership"], [[1, 0.74], [0.74, 1]], atol=0.01)
    assert fields["num_samples"] == 20000 and fields["verdict"] == "uncertain"


def test_confidence_is_the_chance_of_the_reported_partition_in_closed_form():
    """Hand-made softmax(Θ) of 4 tasks and 3 groups: any relabelling of the groups counts."""
    tasks = ("a", "b", "c", "d")
    p = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    reported = [["a", "b"], ["c"], ["d"]]  # argmax: 0, 0, 1, 2
    expected = partition_probability(p, reported, tasks)
    fields = dmtg_confidence.assignment_confidence(tasks, reported, p[None], draws(40000))
    assert fields["confidence"] == pytest.approx(expected, abs=0.008)
    together = sum(p[0, k] * p[1, k] for k in range(3))  # a and b draw the same group
    assert fields["co_membership"][0][1] == pytest.approx(together, abs=0.008)
    other = [["a", "b"], ["c", "d"]]
    shares = {str(a["groups"]): a["share"] for a in fields["alternatives"]}
    assert shares[str(other)] == pytest.approx(partition_probability(p, other, tasks), abs=0.008)


def test_draws_spread_evenly_over_the_epoch_ends():
    """Two epoch ends: uniform (the reported pair together with chance 1/2) and sharp (1): the
    confidence is their mean, 3/4."""
    p = np.array([[[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [1.0, 0.0]]])
    fields = dmtg_confidence.assignment_confidence(("a", "b"), [["a", "b"]], p, draws(20000))
    assert fields["confidence"] == pytest.approx(0.75, abs=0.01)
    labels = dmtg_confidence.assignment_labels(p, 1000, seed=1)
    np.testing.assert_array_equal(labels[1::2], 0)  # odd draws: the sharp epoch end


def test_draws_are_deterministic_for_a_seed():
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(2, 5))
    first = dmtg_confidence.assignment_labels(p, 300, seed=4)
    np.testing.assert_array_equal(first, dmtg_confidence.assignment_labels(p, 300, seed=4))
    assert not np.array_equal(first, dmtg_confidence.assignment_labels(p, 300, seed=5))


def test_window_keeps_the_epochs_where_theta_learned_up_to_the_reported_one():
    window = dmtg_confidence.search_window
    assert list(window(6, 6, learned_from=1, learned_to=6, epochs=0)) == [0, 1, 2, 3, 4, 5]
    assert list(window(6, 6, learned_from=1, learned_to=6, epochs=2)) == [4, 5]
    assert list(window(6, 4, learned_from=1, learned_to=6, epochs=0)) == [0, 1, 2, 3]  # best
    assert list(window(6, 6, learned_from=3, learned_to=4, epochs=0)) == [2, 3]  # warm-up, tune
    assert list(window(6, 6, learned_from=7, learned_to=6, epochs=0)) == []  # Θ never learned


def test_groups_record_with_confidence_uses_the_window_and_falls_back_to_the_reported_theta():
    tasks = ("a", "b")
    theta = np.log(np.array([[0.9, 0.1], [0.8, 0.2]]))
    per_epoch = [[[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [1.0, 0.0]]]
    record = dmtg_outputs.groups_record(tasks, theta, per_epoch)
    sharp = dmtg_outputs.with_confidence(record, [2], draws(500))
    assert sharp["selections"][0]["confidence"] == 1.0 and sharp["resampling"]["epochs"] == [2]
    reported = dmtg_outputs.with_confidence(record, [], draws(20000))
    assert reported["selections"][0]["confidence"] == pytest.approx(0.74, abs=0.01)


def test_confidence_epochs_of_a_run():
    config = load_config("synthetic_dmtg")
    config.num_epochs, config.dmtg.finetune_epochs, config.dmtg.warmup_steps = 6, 1, 25
    ctx = types.SimpleNamespace(config=config, steps_per_epoch=10)
    final = types.SimpleNamespace(best_epoch=[4])
    assert dmtg_outputs.confidence_epochs(ctx, final, 6) == [3, 4, 5]
    config.early_stopping.restore_best = True
    assert dmtg_outputs.confidence_epochs(ctx, final, 6) == [3, 4]
    config.dmtg.confidence.epochs = 1
    assert dmtg_outputs.confidence_epochs(ctx, final, 6) == [4]


def test_a_dmtg_run_writes_its_confidence(tmp_path):
    config = load_config("tiny_test")
    config.method = "dmtg"
    config.mesh.data = 1
    config.dmtg.num_groups = 2
    config.dmtg.confidence.num_samples = 200
    config.early_stopping.restore_best = False  # the last epoch's Θ is reported
    workdir = str(tmp_path / "dmtg")
    results = train.train_and_evaluate(config, workdir)
    record = json.load(open(os.path.join(workdir, "groups.json")))
    (selection,) = record["selections"]
    assert record["resampling"]["epochs"] == [1, 2] and selection["num_samples"] == 200
    assert selection["verdict"] == confidence.verdict(selection["confidence"])
    assert np.shape(selection["co_membership"]) == (4, 4)
    again = dmtg_outputs.with_confidence(record, [1, 2], config.dmtg.confidence)
    assert again["selections"][0]["confidence"] == selection["confidence"]  # seeded
    assert results["outputs"]["selections"][0]["verdict"] == selection["verdict"]
    assert os.path.getsize(os.path.join(workdir, "grouping_confidence.png")) > 1000
