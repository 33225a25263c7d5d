"""Data parallelism on simulated CPU devices: results must not depend on the device count."""

import contextlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import trunk_problem
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tag_jax import affinity, sharding, steps, train

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


@needs_8
def test_affinity_from_8_devices_equals_1_device():
    model, variables, batch = trunk_problem()
    batch = jax.tree.map(lambda x: jnp.concatenate([x, x[:2]]), batch)  # 8 rows, 8 devices
    losses_fn = steps.shared_losses_fn(model, variables["params"], variables["batch_stats"])
    shared = variables["params"]["shared"]

    def lookahead(b):
        return affinity.lookahead_affinity(
            losses_fn, shared, b, learning_rate=0.05, strategy="unrolled"
        )

    one = jax.jit(lookahead)(batch)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    assert len(sharded["image"].sharding.device_set) == 8
    eight = jax.jit(lookahead)(sharded)
    np.testing.assert_allclose(eight, one, rtol=1e-4, atol=1e-5)
    cos_one = affinity.gradient_cosine_similarity(losses_fn, shared, batch)
    cos_eight = jax.jit(lambda b: affinity.gradient_cosine_similarity(losses_fn, shared, b))(
        sharded
    )
    np.testing.assert_allclose(cos_eight, cos_one, rtol=1e-4, atol=1e-5)


@needs_8
def test_same_results_on_1_and_8_devices(tiny_config, tmp_path):
    """A TAG run (plain and measured steps, eval, checkpoints) on 1 and on 8 devices."""
    tiny_config.method = "tag"
    results = {}
    for devices in (1, 8):
        tiny_config.mesh.data = devices
        results[devices] = train.train_and_evaluate(tiny_config, str(tmp_path / f"d{devices}"))
    np.testing.assert_allclose(
        results[8]["test"]["task_loss"], results[1]["test"]["task_loss"], rtol=1e-4
    )
    assert results[8]["test"]["task_accuracy"] == results[1]["test"]["task_accuracy"]
    a1, a8 = (json.load(open(tmp_path / f"d{d}" / "affinity.json"))["matrix"] for d in (1, 8))
    np.testing.assert_allclose(a8, a1, rtol=1e-3, atol=1e-5)


@needs_8
def test_state_is_replicated_and_batch_split_over_the_data_axis(tiny_config):
    tiny_config.mesh.data = 8
    mesh = sharding.create_mesh(tiny_config.mesh)
    batch = sharding.global_batch({"x": np.arange(32.0).reshape(32, 1)}, mesh)
    assert batch["x"].sharding.spec == P("data")
    assert {s.data.shape for s in batch["x"].addressable_shards} == {(4, 1)}


def test_mesh_and_batch_errors(tiny_config):
    tiny_config.mesh.data = 3 * jax.device_count()
    with pytest.raises(Exception, match="does not fit"):
        sharding.create_mesh(tiny_config.mesh)
    if jax.device_count() >= 8:
        tiny_config.mesh.data = 8
        with pytest.raises(Exception, match="divisible by the 8 devices"):
            sharding.check_divisible(36, sharding.create_mesh(tiny_config.mesh), "batch_size")


@pytest.mark.slow
def test_two_processes_on_loopback_match_one_process_on_two_devices(tmp_path):
    """A real multi-process job (2 local CPU processes, gloo collectives) equals 1 process x 2
    devices."""
    import socket
    import subprocess
    import sys

    from conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["--config=configs/tiny_test.py", "--config.num_epochs=1", "--config.method=tag"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tag_jax.main",
                *common,
                f"--workdir={tmp_path / 'multi'}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "tag_jax.main",
            *common,
            f"--workdir={tmp_path / 'single'}",
            "--config.mesh.data=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    assert single.returncode == 0, single.stderr[-2000:]
    multi_results = json.load(open(tmp_path / "multi" / "results.json"))
    single_results = json.load(open(tmp_path / "single" / "results.json"))
    np.testing.assert_allclose(
        multi_results["test"]["task_loss"], single_results["test"]["task_loss"], rtol=1e-4
    )
    np.testing.assert_allclose(
        json.load(open(tmp_path / "multi" / "affinity.json"))["matrix"],
        json.load(open(tmp_path / "single" / "affinity.json"))["matrix"],
        rtol=1e-3,
        atol=1e-5,
    )


@pytest.mark.parametrize("ahead", [0, 2])
def test_device_batches_are_the_global_batches_in_order(ahead):
    mesh = sharding.create_mesh(ml_collections.ConfigDict({"data": 4, "networks": 1}))
    rng = np.random.default_rng(0)
    local = [
        {
            "image": rng.normal(size=(8, 5, 5, 3)).astype(np.float32),
            "labels": rng.integers(0, 2, (8, 3)).astype(np.int32),
            "mask": np.ones(8, np.float32),
        }
        for _ in range(7)
    ]
    with contextlib.closing(sharding.device_batches(iter(local), mesh, ahead=ahead)) as batches:
        got = list(batches)
    assert len(got) == 7
    for want, have in zip(local, got):
        assert have["image"].sharding == sharding.batch_sharding(mesh)
        for key in want:
            np.testing.assert_array_equal(np.asarray(have[key]), want[key])
