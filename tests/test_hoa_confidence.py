"""HOA's confidence: the bootstrap over validation examples (tag_jax.resampling), the resampled
pairwise tables, the per-example evaluation of every network, and a 'pairs' run's groups.json."""

import itertools
import json
import os

import jax
import numpy as np
import pytest

from selection import confidence
from tag_jax import data, evaluation, models, resampling, run_checks, sharding, train
from tag_jax.errors import UserError
from tag_jax.methods import groups, hoa
from tag_jax.methods.stacked_networks import StackedNets

# Two tasks: networks {a}, {b}, {a, b}; cells (member_cells order): a alone, b alone, a in {a, b},
# b in {a, b}; three validation examples. Task a is better alone unless the resample draws
# example 1 more often than example 0; b is better in the pair unless it draws example 2 twice
# or more. Over the 27 equally likely resamples (n0, n1, n2 draws of each example): a pair and b
# pair -> {a, b} (7 of 27); a alone, b pair -> {a} {a, b} (13, the full data's choice); a pair,
# b alone -> {b} {a, b} (3); both alone -> {a} {b} (4).
TINY_TASKS = ("a", "b")
TINY_LOSSES = np.array(
    [
        [0.3, 0.52, 0.61, 0.4],
        [0.9, 0.52, 0.61, 0.4],
        [0.6, 0.52, 0.61, 0.7],
    ]
)


def chosen_groupings(tables):
    sampled, _ = confidence.resampled_selections(
        TINY_TASKS,
        tables,
        {2: [["a"], ["a", "b"]]},
        objective="minimize",
        singletons="diagonal",
        time_budget=60.0,
    )
    return sampled[2]


def test_pairwise_tables_follow_the_pairs_orientation():
    networks = groups.pair_networks(TINY_TASKS)
    assert [list(c) for c in hoa.member_cells(networks, TINY_TASKS)] == [
        [0, 1, 2, 2],
        [0, 1, 0, 1],
        [0, 1, 1, 0],
    ]
    (table,) = hoa.pairwise_tables(TINY_LOSSES[:1], networks, TINY_TASKS, "validation_loss")
    np.testing.assert_allclose(table, [[0.3, 0.61], [0.4, 0.52]])  # [t][u]: t trained with u
    (errors,) = hoa.pairwise_tables(
        np.array([[1.0, 0.5, 0.25, 0.0]]), networks, TINY_TASKS, "validation_error"
    )
    np.testing.assert_allclose(errors, [[0.0, 75.0], [100.0, 50.0]])


def test_hoa_confidence_equals_the_enumerated_bootstrap():
    networks = groups.pair_networks(TINY_TASKS)
    every_resample = np.array(list(itertools.product(range(3), repeat=3)))  # 27, equally likely
    means = resampling.resample_means(TINY_LOSSES, every_resample)
    tables = hoa.pairwise_tables(means, networks, TINY_TASKS, "validation_loss")
    full = hoa.pairwise_tables(
        TINY_LOSSES.mean(0, keepdims=True), networks, TINY_TASKS, "validation_loss"
    )
    (reported,) = chosen_groupings(full)
    assert sorted(reported) == [["a"], ["a", "b"]]
    summary = confidence.grouping_confidence(reported, chosen_groupings(tables), TINY_TASKS)
    assert summary["confidence"] == pytest.approx(13 / 27)
    shares = {
        str(sorted(alternative["groups"])): alternative["share"]
        for alternative in summary["alternatives"]
    }
    assert shares == pytest.approx(
        {"[['a', 'b']]": 7 / 27, "[['a'], ['b']]": 4 / 27, "[['a', 'b'], ['b']]": 3 / 27}
    )


def test_resampled_tables_are_seeded_bootstrap_tables():
    networks = groups.pair_networks(TINY_TASKS)
    tables = hoa.resampled_tables(TINY_LOSSES, networks, TINY_TASKS, "validation_loss", 50, 1)
    again = hoa.resampled_tables(TINY_LOSSES, networks, TINY_TASKS, "validation_loss", 50, 1)
    np.testing.assert_array_equal(tables, again)
    expected = hoa.pairwise_tables(
        resampling.bootstrap_means(TINY_LOSSES, 50, 1), networks, TINY_TASKS, "validation_loss"
    )
    np.testing.assert_array_equal(tables, expected)


def test_member_values_per_example_average_to_the_networks_evaluation(tiny_config):
    """The per-example evaluation of every pair and single network, averaged over the split,
    equals the loop's evaluation of those networks (eval_sums), cell by cell."""
    dataset = data.load_dataset(tiny_config)
    tasks = tuple(dataset.task_names)
    networks = groups.pair_networks(tasks)
    model = models.create_model(tiny_config, len(tasks))
    nets = StackedNets(model, len(networks), "vmap")
    variables = jax.jit(nets.init)(jax.random.key(0), np.zeros((1,) + dataset.image_shape))
    params = jax.tree.map(  # every network different
        lambda leaf: (
            leaf * (1.0 + 0.1 * np.arange(len(networks)).reshape((-1,) + (1,) * (leaf.ndim - 1)))
        ),
        variables["params"],
    )
    mesh = sharding.create_mesh(tiny_config.mesh)
    kwargs = dict(batch_size=24, mesh=mesh)  # a padded last batch
    aggregate = evaluation.evaluate_networks(
        jax.jit(nets.eval_sums), params, variables["batch_stats"], dataset, "validation", **kwargs
    )
    network, task, _ = hoa.member_cells(networks, tasks)
    for value, key in (("loss", "task_loss"), ("correct", "task_accuracy")):
        step = hoa.make_member_example_step(nets, networks, tasks, value)
        per_example = evaluation.per_example_values(
            step, params, variables["batch_stats"], dataset, "validation", **kwargs
        )[value]
        assert per_example.shape == (len(dataset.labels("validation")), len(network))
        np.testing.assert_allclose(
            per_example.mean(0), aggregate[key][network, task], rtol=2e-5, atol=1e-6
        )


def test_pairs_run_writes_the_confidence_of_every_grouping(tiny_config, tmp_path):
    tiny_config.method = "pairs"
    tiny_config.num_epochs = 1
    tiny_config.selection.max_groups = (2, 3)
    tiny_config.groups.confidence.num_resamples = 30
    workdir = str(tmp_path / "pairs")
    results = train.train_and_evaluate(tiny_config, workdir)
    record = json.load(open(os.path.join(workdir, "groups.json")))
    assert record["resampling"]["num_resamples"] == 30
    assert record["resampling"]["examples"] == tiny_config.dataset.num_validation
    assert record["resampling"]["evaluation_seconds"] > 0
    for selection in record["selections"]:
        assert 0.0 <= selection["confidence"] <= 1.0 and selection["num_samples"] == 30
        assert selection["verdict"] == confidence.verdict(selection["confidence"])
        assert np.shape(selection["co_membership"]) == (4, 4)
        shares = selection["confidence"] + sum(a["share"] for a in selection["alternatives"])
        assert shares == pytest.approx(1.0)
    assert os.path.getsize(os.path.join(workdir, "grouping_confidence.png")) > 1000
    assert [s["confidence"] for s in results["outputs"]["selections"]] == [
        s["confidence"] for s in record["selections"]
    ]


def test_bad_confidence_values_are_user_errors(tiny_config):
    tiny_config.method = "pairs"
    for key, value in (
        ("groups.confidence.num_resamples", -1),
        ("groups.confidence.time_budget", 0.0),
        ("groups.confidence.seed", -3),
    ):
        config = tiny_config.copy_and_resolve_references()
        config.update_from_flattened_dict({key: value})
        with pytest.raises(UserError, match=key):
            run_checks.validate_config(config)
