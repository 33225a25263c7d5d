"""Group training ('groups', 'pairs', 'random'): stacked networks equal independent ones."""

import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config
from jax.sharding import PartitionSpec as P

from tag_jax import data, grouping, models, optim, run_checks, sharding, steps, train
from tag_jax.errors import UserError
from tag_jax.methods import groups, hoa, stacked_networks

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

TASKS = ("g0_t0", "g0_t1", "g1_t0", "g1_t1")  # the tiny config's tasks
NETWORKS = [["g0_t0", "g0_t1"], ["g1_t0", "g0_t0", "g1_t1"]]


def tiny_problem(config):
    """(dataset, two training batches, model, optimizer) of the tiny config."""
    dataset = data.load_dataset(config)
    batches = list(
        dataset.batches("train", batch_size=32, seed=0, epoch=0, shuffle=True, drop_remainder=False)
    )[:2]
    model = models.create_model(config, len(TASKS))
    optimizer = optim.create_optimizer(config, steps_per_epoch=3)
    return dataset, batches, model, optimizer


@pytest.fixture(scope="module")
def stacked_runs():
    """Two steps of the NETWORKS stacked, per strategy: {strategy: (state, metrics, eval sums)}."""
    config = load_config("tiny_test")
    dataset, batches, model, optimizer = tiny_problem(config)
    runs = {}
    for strategy in ("vmap", "unrolled"):
        nets = stacked_networks.StackedNets(model, len(NETWORKS), strategy)
        state = steps.init_train_state(nets, optimizer, jax.random.key(0), dataset.image_shape)
        step = jax.jit(
            stacked_networks.make_groups_step(
                nets, optimizer, groups.membership_masks(NETWORKS, TASKS)
            )
        )
        for batch in batches:
            state, metrics = step(state, batch)
        runs[strategy] = (
            state,
            metrics,
            jax.jit(nets.eval_sums)(state.params, state.batch_stats, batches[0]),
        )
    return runs


def test_stacked_networks_train_like_independent_networks_on_their_members_loss(stacked_runs):
    dataset, batches, model, optimizer = tiny_problem(load_config("tiny_test"))

    @jax.jit
    def step(state, batch, mask):
        def objective(params):
            losses, stats = steps.task_losses(model, params, state.batch_stats, batch)
            return (mask * losses).sum(), stats

        grads, stats = jax.grad(objective, has_aux=True)(state.params)
        return steps.apply_gradients(state, optimizer, grads, stats)

    stacked = stacked_runs["vmap"][0]
    for g, mask in enumerate(groups.membership_masks(NETWORKS, TASKS)):
        alone = steps.init_train_state(model, optimizer, jax.random.key(0), dataset.image_shape)
        for batch in batches:
            alone = step(alone, batch, mask)
        network_g = jax.tree.map(lambda a, g=g: a[g], (stacked.params, stacked.batch_stats))
        for a, b in zip(
            jax.tree.leaves(network_g), jax.tree.leaves((alone.params, alone.batch_stats))
        ):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_vmap_and_unrolled_networks_give_the_same_numbers(stacked_runs):
    (vmap_state, *vmap_out), (unrolled_state, *unrolled_out) = stacked_runs.values()
    for a, b in zip(
        jax.tree.leaves((vmap_state.params, vmap_out)),
        jax.tree.leaves((unrolled_state.params, unrolled_out)),
    ):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_serving_rule_and_uncovered_tasks():
    np.testing.assert_array_equal(groups.serving_networks(NETWORKS, TASKS), [0, 0, 1, 1])
    assignment = {
        "g0_t0": NETWORKS[1],
        "g0_t1": NETWORKS[0],
        "g1_t0": NETWORKS[1],
        "g1_t1": NETWORKS[1],
    }
    np.testing.assert_array_equal(
        groups.serving_networks(NETWORKS, TASKS, assignment), [1, 0, 1, 1]
    )
    with pytest.raises(UserError, match=r"\['g1_t1'\] are in no group"):
        groups.check_groups([["g0_t0", "g0_t1"], ["g1_t0"]], TASKS)
    with pytest.raises(UserError, match="non-empty, without repeats"):
        groups.check_groups([["g0_t0", "nope"], ["g0_t1", "g1_t0", "g1_t1"]], TASKS)


def test_eval_sums_of_every_network_equal_each_network_alone(tiny_config):
    dataset, batches, model, _ = tiny_problem(tiny_config)
    nets = stacked_networks.StackedNets(model, len(NETWORKS), "vmap")
    variables = nets.init(jax.random.key(0), batches[0]["image"])
    params = jax.tree.map(
        lambda a: a * jnp.arange(1.0, 3.0).reshape((2,) + (1,) * (a.ndim - 1)), variables["params"]
    )  # make the two networks differ
    every = nets.eval_sums(params, variables["batch_stats"], batches[0])
    for g in range(2):
        alone = steps.eval_sums(
            model,
            jax.tree.map(lambda a, g=g: a[g], params),
            jax.tree.map(lambda a, g=g: a[g], variables["batch_stats"]),
            batches[0],
        )
        np.testing.assert_allclose(every["loss_sum"][g], alone["loss_sum"], rtol=1e-6)
        np.testing.assert_array_equal(every["correct"][g], alone["correct"])
    assert float(every["count"]) == 32


def test_random_partition_is_seeded_covering_and_non_empty():
    tasks = [f"t{i}" for i in range(9)]
    for k in (1, 2, 3, 9):
        split = groups.random_partition(tasks, k, seed=5)
        assert split == groups.random_partition(tasks, k, seed=5)
        assert len(split) == k and all(split)
        assert sorted(t for g in split for t in g) == sorted(tasks)
    assert len({str(groups.random_partition(tasks, 3, seed=s)) for s in range(10)}) > 1
    with pytest.raises(UserError, match="num_random_groups 10"):
        groups.random_partition(tasks, 10, seed=0)


def test_pair_networks_and_groups_file_selection(tmp_path):
    assert groups.pair_networks(["a", "b", "c"]) == [
        ["a"],
        ["b"],
        ["c"],
        ["a", "b"],
        ["a", "c"],
        ["b", "c"],
    ]
    selections = [
        {
            "max_groups": 2,
            "groups": [["a", "b"], ["b", "c"]],
            "assignment": {"a": ["a", "b"], "b": ["b", "c"], "c": ["b", "c"]},
        },
        {
            "max_groups": 3,
            "groups": [["a"], ["b"], ["c"]],
            "assignment": {"a": ["a"], "b": ["b"], "c": ["c"]},
        },
    ]
    path = str(tmp_path / "groups.json")
    grouping.write_groups(str(tmp_path), "tag", ["a", "b", "c"], selections)
    networks, assignment = groups.load_selection(path, 2)
    assert networks == [["a", "b"], ["b", "c"]]
    np.testing.assert_array_equal(
        groups.serving_networks(networks, ["a", "b", "c"], assignment), [0, 1, 1]
    )
    with pytest.raises(UserError, match=r"selections for k in \[2, 3\]"):
        groups.load_selection(path, 4)


def test_config_errors(tiny_config, tmp_path):
    tiny_config.method = "groups"
    with pytest.raises(UserError, match="exactly one of"):
        run_checks.validate_config(tiny_config)
    tiny_config.groups.groups_file = str(tmp_path / "missing.json")
    with pytest.raises(UserError, match="does not exist"):
        run_checks.validate_config(tiny_config)
    tiny_config.groups.groups_file = ""
    tiny_config.groups.groups = (("g0_t0", "g0_t1"),)
    with pytest.raises(UserError, match="in no group"):
        train.train_and_evaluate(tiny_config, str(tmp_path / "run"))


def test_pairs_table_orientation_and_hoa_selection(tiny_config, tmp_path, monkeypatch):
    """A hand-made (G, T) evaluation: g0 tasks help each other, g1 tasks too, across hurts."""
    networks = groups.pair_networks(TASKS)
    alone, within, across = 0.6, 0.3, 0.9
    loss = np.full((len(networks), len(TASKS)), np.nan)
    for g, members in enumerate(networks):
        for t in members:
            partner = next((u for u in members if u != t), t)
            loss[g, TASKS.index(t)] = (
                alone if partner == t else within if partner[:2] == t[:2] else across
            )
    loss[networks.index(["g0_t0", "g1_t0"]), 0] = 0.2  # g0_t0 gains from g1_t0, not vice versa
    accuracy = 1.0 - loss / 2
    evaluation = {"task_loss": loss.tolist(), "task_accuracy": accuracy.tolist()}
    calls = []
    original = grouping.select_for_each_k
    monkeypatch.setattr(
        grouping,
        "select_for_each_k",
        lambda *args, **kwargs: calls.append((args, kwargs)) or original(*args, **kwargs),
    )
    context = types.SimpleNamespace(workdir=str(tmp_path), task_names=TASKS)
    final = types.SimpleNamespace(validation=evaluation, test=evaluation)
    summary = hoa.write_pairs_outputs(
        context,
        final,
        None,  # no stacked networks: no confidence (tests/test_hoa_confidence.py)
        networks=networks,
        score="validation_loss",
        max_groups=(2,),
        time_limit=10.0,
        confidence_config=ml_collections.ConfigDict({"num_resamples": 0}),
    )
    record = json.load(open(tmp_path / "pairs.json"))
    assert record["validation_loss"]["g0_t0"]["g1_t0"] == pytest.approx(0.2)
    assert record["validation_loss"]["g1_t0"]["g0_t0"] == pytest.approx(across)
    assert record["validation_loss"]["g1_t1"]["g1_t1"] == pytest.approx(alone)
    assert record["test_error"]["g0_t1"]["g0_t0"] == pytest.approx(100 * within / 2)
    (tasks, matrix, ks), kwargs = calls[0]
    assert matrix[0][2] == pytest.approx(0.2) and matrix[2][0] == pytest.approx(across)
    assert kwargs["objective"] == "minimize" and kwargs["singletons"] == "diagonal"
    chosen = json.load(open(tmp_path / "groups.json"))["selections"][0]
    assert sorted(chosen["groups"]) == [["g0_t0", "g0_t1"], ["g1_t0", "g1_t1"]]
    assert summary["selections"][0]["groups"] == chosen["groups"]


def final_results(workdir):
    return json.load(open(os.path.join(workdir, "results.json")))


@needs_8
def test_networks_sharded_over_the_mesh_equal_the_unsharded_run(tiny_config, tmp_path):
    tiny_config.method = "groups"
    tiny_config.groups.groups = tuple(tuple(g) for g in NETWORKS)
    tiny_config.num_epochs = 1
    runs = {}
    for data_devices, network_devices in ((1, 1), (4, 2)):
        tiny_config.mesh.data, tiny_config.mesh.networks = data_devices, network_devices
        workdir = str(tmp_path / f"d{data_devices}n{network_devices}")
        train.train_and_evaluate(tiny_config, workdir)
        runs[network_devices] = final_results(workdir)
    np.testing.assert_allclose(
        runs[2]["test"]["task_loss"], runs[1]["test"]["task_loss"], rtol=1e-4
    )
    assert runs[2]["test"]["task_accuracy"] == runs[1]["test"]["task_accuracy"]
    trained = json.load(open(tmp_path / "d4n2" / "groups_trained.json"))
    assert trained["serving"]["g1_t0"] == NETWORKS[1] and trained["groups"] == NETWORKS
    method = groups.build_groups(tiny_config, TASKS, (8, 8, 3), steps_per_epoch=3)
    spec = method.state_sharding(sharding.create_mesh(tiny_config.mesh))
    assert spec.params["shared"]["Conv3x3_0"]["kernel"].spec == P(sharding.NETWORKS)
    assert spec.step.spec == P()


def test_stacked_seeds_equal_separate_runs(tiny_config, tmp_path):
    """groups.seeds = 2 trains the seeds' networks side by side, each copy as its own run."""
    tiny_config.method = "random"
    tiny_config.groups.num_random_groups = 2
    tiny_config.seed = 5
    separate = []
    for seed in (5, 6):
        config = tiny_config.copy_and_resolve_references()
        config.seed = seed
        separate.append(train.train_and_evaluate(config, str(tmp_path / f"seed{seed}")))
    tiny_config.groups.seeds = 2
    stacked = train.train_and_evaluate(tiny_config, str(tmp_path / "stacked"))
    assert stacked["compute"]["trunk_passes"] == 2 * separate[0]["compute"]["trunk_passes"]
    for got, alone in zip(stacked["seed_results"], separate):
        assert got["groups"] == alone["groups"] and got["best_epoch"] == alone["best_epoch"]
        for split in ("validation", "test"):
            np.testing.assert_allclose(
                got[split]["task_loss"], alone[split]["task_loss"], rtol=2e-5
            )
            np.testing.assert_allclose(got[split]["task_accuracy"], alone[split]["task_accuracy"])
    assert stacked["seed_results"][0]["seed"] == 5 and stacked["seed_results"][1]["seed"] == 6
    assert stacked["test"] == stacked["seed_results"][0]["test"]
    assert separate[0]["validation"]["task_loss"] != separate[1]["validation"]["task_loss"]
    tiny_config.method = "pairs"
    with pytest.raises(UserError, match=r"config.groups.seeds=2 is for 'groups' and 'random'"):
        train.train_and_evaluate(tiny_config, str(tmp_path / "pairs"))
