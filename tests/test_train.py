"""The training loop end to end on tiny configs: outputs, resume, bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, load_config

from tag_jax import checkpointing, data, divergence, evaluation, models, run_checks, steps, train
from tag_jax.errors import TrainingDiverged, UserError
from tag_jax.results import named_scalars


def final_params(workdir):
    """Parameters of the latest checkpoint as numpy leaves."""
    manager = checkpointing.create_manager(workdir, keep=2)
    restored = manager.restore(
        manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    return [np.asarray(x) for x in jax.tree.leaves(restored.state["params"])]


def test_one_train_step_lowers_the_loss_on_a_fixed_batch(tiny_config):
    dataset = data.load_dataset(tiny_config)
    batch = next(
        dataset.batches(
            "train", batch_size=32, seed=0, epoch=0, shuffle=False, drop_remainder=False
        )
    )
    model = models.create_model(tiny_config, len(dataset.task_names))
    optimizer = optax.sgd(0.1)
    state = steps.init_train_state(model, optimizer, jax.random.key(0), dataset.image_shape)
    step = jax.jit(steps.make_mtl_step(model, optimizer))
    state, first = step(state, batch)
    _, second = step(state, batch)
    assert float(second["loss"]) < float(first["loss"])


def test_mtl_run_writes_config_metrics_results_and_checkpoints(tiny_config, tmp_path):
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(tiny_config, workdir)
    assert json.load(open(os.path.join(workdir, "config.json")))["batch_size"] == 32
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any("train/loss" in r for r in records) and any("val/loss" in r for r in records)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
    assert os.listdir(os.path.join(workdir, "checkpoints"))
    saved = json.load(open(os.path.join(workdir, "results.json")))
    assert saved["test"]["total_error"] == pytest.approx(results["test"]["total_error"])
    accuracy = np.array(saved["test"]["task_accuracy"])
    assert saved["test"]["total_error"] == pytest.approx((100 * (1 - accuracy)).sum())
    assert results["steps"] == 2 * 3
    assert saved["autotune"]["model.conv"]["source"] == "rule"  # the tests time nothing


def test_threaded_xla_convolution_trains_like_xla(tiny_config, tmp_path):
    """model.conv='xla_threaded' runs the whole loop with its compiler options (train, measured
    and eval steps) and trains the same network as 'xla', to float rounding."""
    tiny_config.method = "tag"
    runs = {}
    for conv in ("xla", "xla_threaded"):
        tiny_config.model.conv = conv
        runs[conv] = train.train_and_evaluate(tiny_config, str(tmp_path / conv))
    assert runs["xla_threaded"]["autotune"]["model.conv"] == {
        "choice": "xla_threaded",
        "source": "explicit",
    }
    np.testing.assert_allclose(
        runs["xla_threaded"]["test"]["task_loss"], runs["xla"]["test"]["task_loss"], rtol=1e-3
    )


@pytest.mark.parametrize("method", ["mtl", "tag", "dmtg"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_config, tmp_path, method):
    tiny_config.method = method
    if method == "dmtg":  # stop inside the fine-tune epoch; Gumbel noise must replay exactly
        tiny_config.dmtg.num_groups = 2
        tiny_config.dmtg.finetune_epochs = 1
        tiny_config.optimizer.name = "adam"
    tiny_config.checkpoint_every_steps = 2
    tiny_config.early_stopping.patience = 0
    whole = str(tmp_path / "whole")
    expected = train.train_and_evaluate(tiny_config, whole)
    parts = str(tmp_path / "parts")
    tiny_config.max_steps = 4  # stops in the middle of epoch 2
    assert train.train_and_evaluate(tiny_config, parts) == {"stopped_at_step": 4}
    tiny_config.max_steps = -1
    resumed = train.train_and_evaluate(tiny_config, parts)
    for a, b in zip(final_params(whole), final_params(parts)):
        np.testing.assert_array_equal(a, b)
    assert resumed["test"] == expected["test"]
    outputs = {"tag": "affinity.json", "dmtg": "groups.json"}
    if method in outputs:
        assert json.load(open(os.path.join(whole, outputs[method]))) == json.load(
            open(os.path.join(parts, outputs[method]))
        )
    steps_logged = [
        json.loads(line)["step"]
        for line in open(os.path.join(parts, "metrics.jsonl"))
        if "train/loss" in line
    ]
    assert len(steps_logged) == len(set(steps_logged))  # nothing logged twice after the resume


@pytest.mark.parametrize("method", ["tag", "cs"])
def test_affinity_run_writes_affinity_json_and_plots(tiny_config, tmp_path, method):
    tiny_config.method = method
    workdir = str(tmp_path / method)
    train.train_and_evaluate(tiny_config, workdir)
    record = json.load(open(os.path.join(workdir, "affinity.json")))
    assert record["method"] == method
    assert record["orientation"] == "matrix[source][target]"
    assert record["tasks"] == ["g0_t0", "g0_t1", "g1_t0", "g1_t1"]
    assert np.array(record["matrix"]).shape == (4, 4)
    assert len(record["per_epoch"]) == 2
    # every_n_steps = 2 over 6 steps: steps 0, 2, 4
    assert record["steps_recorded"] == 3
    # epoch 1 holds the records of steps 0 and 2, epoch 2 that of step 4: the run mean weighs them
    epochs = np.array(record["per_epoch"])
    np.testing.assert_allclose((2 * epochs[0] + epochs[1]) / 3, record["matrix"], rtol=1e-5)
    results = json.load(open(os.path.join(workdir, "results.json")))
    sources = 4 if method == "tag" else 0  # a TAG measured step: 1 + 4 lookaheads + 4 pulls
    assert results["compute"] == {
        **results["compute"],
        "measured_steps": 3,
        "trunk_passes_per_step": [1, 1 + sources + 4],
        "trunk_passes": 3 + 3 * (1 + sources + 4),
    }
    assert [s["groups"] for s in results["outputs"]["selections"]] == [
        s["groups"] for s in json.load(open(os.path.join(workdir, "groups.json")))["selections"]
    ]
    if method == "cs":
        np.testing.assert_allclose(np.diag(record["matrix"]), 1.0, rtol=1e-5)
    for picture in ("affinity.png", "affinity_over_time.png", "groups.png"):
        assert os.path.getsize(os.path.join(workdir, picture)) > 1000
    groups = json.load(open(os.path.join(workdir, "groups.json")))
    assert [s["max_groups"] for s in groups["selections"]] == [2, 3]
    for chosen in groups["selections"]:
        assert 1 <= len(chosen["groups"]) <= chosen["max_groups"]
        assert sorted(chosen["assignment"]) == sorted(record["tasks"])
        assert all(t in g for t, g in chosen["assignment"].items())
        assert chosen["gap"] == 0.0


def test_affinity_goes_to_tensorboard_and_metrics_every_epoch(tiny_config, tmp_path):
    tiny_config.method = "tag"
    workdir = str(tmp_path / "tag")
    train.train_and_evaluate(tiny_config, workdir)
    epochs = json.load(open(os.path.join(workdir, "affinity.json")))["per_epoch"]
    logged = [
        json.loads(line)
        for line in open(os.path.join(workdir, "metrics.jsonl"))
        if "affinity/" in line
    ]
    assert [r["step"] for r in logged] == [3, 6]
    for record, matrix in zip(logged, epochs):
        assert record["affinity/g0_t1/g1_t0"] == pytest.approx(matrix[1][2], rel=1e-5)


def test_every_metric_leaf_of_a_step_is_logged(tiny_config, tmp_path):
    tiny_config.method = "gradnorm"  # metrics: loss, task_losses, gradnorm_loss, task_weights
    tiny_config.num_epochs = 1
    workdir = str(tmp_path / "gradnorm")
    train.train_and_evaluate(tiny_config, workdir)
    logged = [
        json.loads(line)
        for line in open(os.path.join(workdir, "metrics.jsonl"))
        if "train/loss" in line
    ]
    assert [r["step"] for r in logged] == [2]
    weights = [logged[0][f"train/task_weights/{t}"] for t in ("g0_t0", "g0_t1", "g1_t0", "g1_t1")]
    assert sum(weights) == pytest.approx(4.0, rel=1e-5)  # GradNorm rescales them to sum to T
    assert "train/gradnorm_loss" in logged[0] and "train/loss/g1_t1" in logged[0]


def test_named_scalars_by_shape():
    scalars = named_scalars(
        "train",
        {
            "loss": np.float32(2.0),
            "task_losses": np.array([1.0, 3.0]),
            "network_loss": np.array([[4.0, 5.0, 6.0]]),
        },
        ("a", "b"),
    )
    assert scalars == {
        "train/loss": 2.0,
        "train/loss/a": 1.0,
        "train/loss/b": 3.0,
        "train/network_loss/0": 4.0,
        "train/network_loss/1": 5.0,
        "train/network_loss/2": 6.0,
    }


def test_order_1_writes_the_all_tasks_source(tiny_config, tmp_path):
    tiny_config.method = "tag"
    tiny_config.affinity.order = "1"
    tiny_config.num_epochs = 1
    workdir = str(tmp_path / "order1")
    train.train_and_evaluate(tiny_config, workdir)
    record = json.load(open(os.path.join(workdir, "affinity.json")))
    assert record["sources"][-1] == record["tasks"]
    assert np.array(record["source_matrix"]).shape == (5, 4)
    np.testing.assert_allclose(np.array(record["source_matrix"])[:4], record["matrix"])


def test_nan_loss_stops_with_the_task_named_and_keeps_the_last_checkpoint(tiny_config, tmp_path):
    workdir = str(tmp_path / "nan")
    tiny_config.num_epochs = 1
    train.train_and_evaluate(tiny_config, workdir)
    before = final_params(workdir)
    tiny_config.num_epochs = 3
    tiny_config.optimizer.learning_rate = 1e30
    with pytest.raises(TrainingDiverged, match=r"loss of task\(s\) \['g0_t0'.*non-finite"):
        train.train_and_evaluate(tiny_config, workdir)
    for a, b in zip(before, final_params(workdir)):
        np.testing.assert_array_equal(a, b)


def test_the_loop_never_reads_a_device_value_between_steps(tiny_config, tmp_path, monkeypatch):
    """Between two training steps that are neither log nor checkpoint steps, nothing is copied to
    the host (a jax.device_get or an array turned into a number or numpy array would make the
    host wait for the step before queueing the next)."""
    from jax._src import array as array_impl  # pylint: disable=g-import-not-at-top

    events = []
    for name in ("__array__", "__float__", "__int__", "__bool__", "__index__", "item", "tolist"):
        original = getattr(array_impl.ArrayImpl, name)
        monkeypatch.setattr(
            array_impl.ArrayImpl,
            name,
            lambda self, *a, _original=original, **k: (
                events.append("read"),
                _original(self, *a, **k),
            )[1],
        )
    device_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: (events.append("read"), device_get(x))[1])
    set_up = train.set_up

    def set_up_recording_steps(*args, **kwargs):
        run = set_up(*args, **kwargs)
        for field in ("train_step", "measured_step"):
            step = getattr(run, field)
            if step:
                run = dataclasses.replace(
                    run,
                    **{
                        field: lambda state, batch, _step=step: (
                            events.append("step"),
                            _step(state, batch),
                        )[1]
                    },
                )
        return run

    monkeypatch.setattr(train, "set_up", set_up_recording_steps)
    tiny_config.update_from_flattened_dict(
        {
            "method": "tag",
            "affinity.every_n_steps": 2,
            "num_epochs": 1,
            "dataset.num_train": 288,
            "log_every_steps": 1000,
            "checkpoint_every_steps": 0,
            "early_stopping.patience": 0,
        }
    )
    assert train.train_and_evaluate(tiny_config, str(tmp_path))["steps"] == 9
    steps_at = [i for i, event in enumerate(events) if event == "step"]
    assert len(steps_at) == 9
    assert "read" not in events[steps_at[0] : steps_at[-1]], events


def test_check_finite_names_only_the_bad_task():
    with pytest.raises(TrainingDiverged, match=r"\['b'\] became non-finite at step 7"):
        divergence.check_finite(np.array([1.0, np.nan, 2.0]), ("a", "b", "c"), 7, "/tmp/w")
    divergence.check_finite(np.array([1.0, 2.0]), ("a", "b"), 1, "/tmp/w")


def test_bad_config_values_and_workdir(tiny_config, tmp_path):
    for key, value, message in [
        ("method", "nope", "unknown config.method"),
        ("batch_size", 0, "batch_size must be >= 1"),
        ("model.conv", "fft", "unknown config.model.conv"),
    ]:
        config = tiny_config.copy_and_resolve_references()
        config.update_from_flattened_dict({key: value})
        with pytest.raises(UserError, match=message):
            train.train_and_evaluate(config, str(tmp_path / "w"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write to --workdir"):
        train.train_and_evaluate(tiny_config, str(blocker / "sub"))
    tiny_config.affinity.lookahead = "momentum"
    tiny_config.method = "tag"
    tiny_config.optimizer.name = "adam"
    with pytest.raises(UserError, match="lookahead='momentum' needs"):
        train.train_and_evaluate(tiny_config, str(tmp_path / "w"))


def test_corrupt_checkpoint_is_a_clear_error(tiny_config, tmp_path):
    workdir = str(tmp_path / "corrupt")
    tiny_config.num_epochs = 1
    train.train_and_evaluate(tiny_config, workdir)
    step_dir = os.path.join(workdir, "checkpoints", "3")
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(UserError, match=f"checkpoint {step_dir} is damaged.*delete that folder"):
        train.train_and_evaluate(tiny_config, workdir)
    os.remove(os.path.join(step_dir, checkpointing.CHECKSUMS))  # unverified: orbax's own error
    with pytest.raises(UserError, match="cannot be restored.*delete that folder"):
        train.train_and_evaluate(tiny_config, workdir)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tag_jax.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_unknown_key_and_wrong_type_exit_2_with_one_line(tmp_path):
    for override, message in [
        ("--config.no_such_key=1", "unknown config key 'no_such_key'"),
        ("--config.num_epochs=abc", "num_epochs=abc"),
    ]:
        proc = run_cli("--config=configs/tiny_test.py", f"--workdir={tmp_path}", override)
        assert proc.returncode == 2
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and message in last
        assert "Traceback" not in proc.stderr


def test_cli_runs_with_overrides_prints_the_answer_and_stays_quiet(tmp_path):
    proc = run_cli(
        "--config=configs/tiny_test.py",
        f"--workdir={tmp_path}",
        "--config.method=tag",
        "--config.num_epochs=1",
        "--config.seed=1",
        "--config.batch_size=48",
        "--config.affinity.every_n_steps=1",
    )  # 2 steps: measure both
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.load(open(tmp_path / "config.json"))
    assert (config["num_epochs"], config["seed"], config["batch_size"]) == (1, 1, 48)
    assert "epoch 1/1: train loss " in proc.stderr and "train/loss" not in proc.stderr
    assert '"steps_per_sec"' in (tmp_path / "metrics.jsonl").read_text()
    results = json.load(open(tmp_path / "results.json"))
    assert results["steps"] == 2
    assert "Compiling the tag measured step" in proc.stderr
    assert "oneDNN" not in proc.stderr and "absl::InitializeLog" not in proc.stderr
    out = proc.stdout.splitlines()
    assert f"tag: test Total Error {results['test']['total_error']:.2f}" in proc.stdout
    for selection in results["outputs"]["selections"]:  # k, score, gap and groups, one line each
        groups = " ".join("{" + ", ".join(g) + "}" for g in selection["groups"])
        assert any(
            line.split()[:1] == [str(selection["max_groups"])] and line.endswith(groups)
            for line in out
        ), (selection, out)
    written = " ".join(out[[line.startswith("results in ") for line in out].index(True) :])
    assert "affinity.json" in written and "groups.json" in written  # the last lines


def test_help_lists_config_keys_fast_without_tensorflow():
    proc = run_cli("--help", "--config=configs/tiny_test.py")
    assert proc.returncode == 0, proc.stderr
    assert "affinity.every_n_steps = 2" in proc.stdout  # tiny_test's value
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("dataset.noise ="))
    assert "pixel noise" in line
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\ntry:\n import runpy; "
            "sys.argv=['m','--help']; runpy.run_module('tag_jax.main', "
            "run_name='__main__')\nexcept SystemExit: pass\n"
            "assert 'tensorflow' not in sys.modules, 'TensorFlow imported'\n"
            "print('clean')",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.stdout.strip().endswith("clean"), check.stderr[-500:]


def test_a_workdir_holding_another_run_is_refused_before_anything_changes(tiny_config, tmp_path):
    workdir = tmp_path / "run"
    tiny_config.num_epochs = 1
    train.train_and_evaluate(tiny_config, str(workdir))
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    other = tiny_config.copy_and_resolve_references()
    other.method = "cs"
    with pytest.raises(UserError, match=r"holds another run \(method='mtl'\); use a new --workdir"):
        train.train_and_evaluate(other, str(workdir))
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before
    tiny_config.num_epochs = 2  # more epochs of the same run: resumed
    assert train.train_and_evaluate(tiny_config, str(workdir))["epochs"] == 2


def test_majority_baseline_against_a_count_by_hand():
    rng = np.random.default_rng(0)
    train_labels = np.stack([rng.random(50) < 0.3, rng.random(50) < 0.8, rng.integers(0, 3, 50)], 1)
    splits = {
        "train": (None, train_labels.astype(int)),
        "validation": (None, rng.integers(0, 3, (20, 3))),
        "test": (None, rng.integers(0, 3, (30, 3))),
    }
    baseline = evaluation.majority_baseline(data.ArrayDataset(("a", "b", "c"), splits), 3)
    for t in range(3):
        counts = [sum(1 for v in train_labels[:, t] if v == c) for c in range(3)]
        majority = counts.index(max(counts))
        assert baseline["classes"][t] == majority
        for split in ("validation", "test"):
            labels = splits[split][1][:, t]
            accuracy = sum(1 for v in labels if v == majority) / len(labels)
            assert baseline[split]["task_accuracy"][t] == pytest.approx(accuracy)
    for split in ("validation", "test"):
        assert baseline[split]["total_error"] == pytest.approx(
            sum(100 * (1 - a) for a in baseline[split]["task_accuracy"])
        )
    assert evaluation.learned(0.9 * baseline["validation"]["total_error"], baseline)
    assert not evaluation.learned(0.95 * baseline["validation"]["total_error"], baseline)


def test_min_train_steps_adds_epochs_and_min_steps_delays_early_stopping(tiny_config, tmp_path):
    tiny_config.min_train_steps = 10  # 3 steps per epoch: 4 epochs, not 2
    tiny_config.early_stopping.patience = 1
    tiny_config.early_stopping.min_steps = 12
    tiny_config.optimizer.learning_rate = 1e-9  # no epoch improves on the first: patience 1 would
    results = train.train_and_evaluate(tiny_config, str(tmp_path / "steps"))  # stop at epoch 2
    assert results["steps"] == 12 and results["epochs"] == 4
    assert results["stopped_early"] and results["restored_epoch"] == results["best_epoch"]


@pytest.mark.parametrize(
    "name", sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py"))
)
def test_every_shipped_config_passes_validation(name):
    run_checks.validate_config(load_config(name))
