"""Faults in run files, signals and resources: each is a one-line error (or a documented exit),
never a traceback, and nothing the project did not write is touched (docs/faults.md)."""

import json
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import USER_FILES, make_files

from tag_jax import (
    checkpointing,
    cli,
    divergence,
    early_stopping,
    manifest,
    models,
    preflight,
    reporting,
    step_timing,
    train,
)
from tag_jax.errors import TrainingDiverged, UserError
from tag_jax.loop_state import LoopState


def saved_checkpoint(tmp_path, meta=None):
    """A manager over tmp_path/checkpoints holding step 3 of a two-leaf state; the state."""
    manager = checkpointing.create_manager(str(tmp_path), keep=2)
    state = {"w": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    checkpointing.save(manager, 3, state, meta or {"epoch": 1, "batch": 0})
    return manager, state


def rewrite(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def assert_damaged(error: UserError, what: str) -> None:
    message = str(error)
    assert "\n" not in message and cli.one_line(error) == message
    assert message.startswith("checkpoint ") and " is damaged (" in message, message
    assert what in message, message
    assert message.endswith("or re-run with --restart to start over"), message


CHECKSUM_FILES = [
    ("a list", "[1, 2]", "checksums.json is not an object of file names and sha256 digests"),
    ("a string", '"abc"', "is not an object of file names"),
    ("null", "null", "is not an object of file names"),
    ("a number", "1e999", "is not an object of file names"),
    ("digests not strings", '{"meta/metadata": 3}', "is not an object of file names"),
    ("truncated", '{"meta/metadata": "ab', "checksums.json is unreadable (Unterminated string"),
    ("deeply nested", "[" * 100_000 + "]" * 100_000, "checksums.json is unreadable ("),
    ("empty", "", "checksums.json is unreadable (Expecting value"),
    ("an empty object", "{}", "differs from its checksum"),
    ("a file the step lacks", None, "zzz is missing"),  # the true digests and one more
]


@pytest.mark.parametrize(
    "text, what", [c[1:] for c in CHECKSUM_FILES], ids=[c[0] for c in CHECKSUM_FILES]
)
def test_a_damaged_checksums_file_of_any_shape_is_one_line(tmp_path, text, what):
    manager, state = saved_checkpoint(tmp_path)
    folder = checkpointing.step_dir(manager, 3)
    if text is None:
        text = json.dumps({**checkpointing.file_checksums(folder), "zzz": "00"})
    rewrite(os.path.join(folder, checkpointing.CHECKSUMS), text)
    with pytest.raises(checkpointing.CheckpointError) as info:
        checkpointing.restore_latest(manager, state)
    assert_damaged(info.value, what)


def strict_meta(meta: dict) -> dict:
    """A reader like the loop's: 'epoch' and 'batch' required, integers."""
    for key in ("epoch", "batch"):
        if not isinstance(meta[key], int):
            raise TypeError(f"{key} is {meta[key]!r}, not an integer")
    return meta


META_FILES = [
    (
        "an empty object",
        {},
        "its loop record (meta) is not one this version writes: missing 'epoch'",
    ),
    ("a list", [1, 2], "its loop record (meta) is not one this version writes: a JSON list"),
    ("a string", "epoch", "a JSON str, not an object"),
    ("a value of the wrong type", {"epoch": "one", "batch": 0}, "epoch is 'one', not an integer"),
]


@pytest.mark.parametrize("meta, what", [c[1:] for c in META_FILES], ids=[c[0] for c in META_FILES])
def test_checkpoint_meta_of_the_wrong_shape_is_one_line_even_with_matching_checksums(
    tmp_path, meta, what
):
    manager, state = saved_checkpoint(tmp_path)
    folder = checkpointing.step_dir(manager, 3)
    rewrite(os.path.join(folder, "meta", "metadata"), json.dumps(meta))
    rewrite(  # checksums that match: a checkpoint another version wrote, not a damaged file
        os.path.join(folder, checkpointing.CHECKSUMS),
        json.dumps(checkpointing.file_checksums(folder)),
    )
    with pytest.raises(checkpointing.CheckpointError) as info:
        checkpointing.restore_latest(manager, state, read_meta=strict_meta)
    assert_damaged(info.value, what)


def test_an_intact_checkpoint_restores_through_the_meta_reader(tmp_path):
    manager, state = saved_checkpoint(tmp_path, meta={"epoch": 2, "batch": 5})
    restored, meta = checkpointing.restore_latest(manager, state, read_meta=strict_meta)
    assert meta == {"epoch": 2, "batch": 5}
    np.testing.assert_array_equal(restored["w"], state["w"])


# --- memory needed, estimated before anything is allocated (tag_jax.preflight) ---


@pytest.mark.parametrize("image_shape, width, tasks", [((8, 8, 3), 4, 4), ((13, 13, 1), 6, 2)])
def test_parameter_count_matches_the_initialised_network(tiny_config, image_shape, width, tasks):
    tiny_config.model.width = width
    model = models.create_model(tiny_config, tasks)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
    )
    counted = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
    assert preflight.parameter_count(tasks, image_shape, width, 2) == counted


def free_memory(monkeypatch, num_bytes):
    monkeypatch.setattr(step_timing, "free_memory_bytes", lambda device: num_bytes)


def test_a_run_that_cannot_fit_names_its_largest_need_and_the_setting(tiny_config, monkeypatch):
    needs = preflight.run_needs(tiny_config, 4, (8, 8, 3), 4)
    total = sum(n.bytes for n in needs)
    assert needs[0].bytes == 32 * 8 * 8 * 3 * 4  # one training batch of float32 pixels
    free_memory(monkeypatch, total)
    preflight.check_fits(needs)  # exactly enough
    tiny_config.batch_size = 10**9
    with pytest.raises(UserError) as info:
        preflight.check_fits(preflight.run_needs(tiny_config, 4, (8, 8, 3), 4))
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(
        r"this run needs at least [\d,.]+ GiB of host memory, 0.1 MiB free \(the largest need: "
        r"the first convolution's 8x8x4 output and its gradient for each of the 1000000000 "
        r"training examples per device, [\d,.]+ GiB\); lower config.batch_size \(or .*\)",
        message,
    ), message


def test_dataset_needs_come_from_the_config_or_the_npz_headers(tiny_config, tmp_path):
    (need,) = preflight.dataset_needs(tiny_config)
    side, examples = tiny_config.image_size, 96 + 32 + 32
    assert need.bytes == examples * side * side * 3 * 4 + 96 * side * side * (2 + 3) * 8
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((10, 6, 6, 2), np.float32), labels=np.zeros((10, 1), int))
    tiny_config.dataset.name, tiny_config.dataset.path = "npz", str(path)
    (need,) = preflight.dataset_needs(tiny_config)
    assert need.bytes == 2 * 10 * 6 * 6 * 2 * 4 and "config" not in need.lower


# --- what the data decides, checked before training ---


@pytest.mark.parametrize("method", ["tag", "cs", "pairs", "dmtg", "random"])
def test_a_grouping_method_on_one_task_is_refused_before_anything_is_written(
    tiny_config, tmp_path, method
):
    tiny_config.method = method
    tiny_config.tasks = ("g0_t0",)
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert str(info.value) == (
        f"config.method={method!r} groups tasks and needs at least 2; the data gives 1 (g0_t0): "
        "give more tasks (config.tasks, or the dataset's), or train them with config.method='mtl'"
    )
    assert not (tmp_path / "run").exists()


def test_an_npz_with_one_task_is_refused_for_tag(tiny_config, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "one.npz"
    np.savez(
        path,
        images=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
        labels=(np.arange(40) % 2)[:, None],
        task_names=np.array(["only"]),
    )
    tiny_config.method, tiny_config.dataset.name, tiny_config.dataset.path = "tag", "npz", str(path)
    with pytest.raises(UserError, match=r"needs at least 2; the data gives 1 \(only\)"):
        train.train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# --- what a run wrote (tag_jax.manifest) ---


def test_restart_refuses_a_folder_that_holds_no_run_and_deletes_nothing(tmp_path):
    make_files(tmp_path, USER_FILES)
    with pytest.raises(UserError) as info:
        manifest.remove_written(str(tmp_path))
    assert str(info.value) == (
        f"--restart: --workdir {tmp_path} holds files but no run of tag_jax (no "
        ".tag_jax_manifest.json); it deletes only what a run wrote: use a new or empty folder"
    )
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == (
        sorted(USER_FILES)
    )
    assert manifest.remove_written(str(tmp_path / "new")) == []  # nothing there: nothing to do


def test_restart_deletes_exactly_what_was_claimed_and_written(tmp_path):
    make_files(tmp_path, USER_FILES)
    manifest.claim(str(tmp_path), ("config.json", "results.json", "checkpoints", "groups.json"))
    make_files(tmp_path, ("config.json", "results.json", "checkpoints/3/state", ".abcd1234.tmp"))
    (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-17").mkdir()
    deleted = manifest.remove_written(str(tmp_path))
    assert deleted == ["checkpoints", "config.json", "results.json"]  # groups.json: never made
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted([*USER_FILES, ".tag_jax_manifest.json"])
    assert json.loads((tmp_path / ".tag_jax_manifest.json").read_text())["names"] == []


def test_a_run_never_overwrites_an_output_name_it_did_not_write(tmp_path):
    make_files(tmp_path, ("config.json", "notes.txt"))
    with pytest.raises(UserError) as info:
        manifest.check_not_foreign(str(tmp_path), manifest.RUN_OUTPUTS)
    assert str(info.value) == (
        f"--workdir {tmp_path} holds config.json, which no run of tag_jax wrote there (it is not "
        "in .tag_jax_manifest.json): a run never overwrites it; move it away, or use another "
        "--workdir"
    )
    (tmp_path / "config.json").unlink()
    manifest.check_not_foreign(str(tmp_path), manifest.RUN_OUTPUTS)  # notes.txt is no output
    manifest.claim(str(tmp_path), ("config.json",))
    make_files(tmp_path, ("config.json",))
    manifest.check_not_foreign(str(tmp_path), manifest.RUN_OUTPUTS)  # now the run's own


def test_settle_keeps_what_exists_and_adds_the_new_names(tmp_path):
    manifest.claim(str(tmp_path), ("config.json", "groups.json"))
    make_files(tmp_path, ("config.json", "events.out.tfevents.1.host"))
    manifest.settle(str(tmp_path), ["events.out.tfevents.1.host"])
    assert manifest.written(str(tmp_path)) == ["config.json", "events.out.tfevents.1.host"]


def test_a_run_left_by_a_version_without_manifests_is_adopted(tmp_path):
    make_files(tmp_path, ("results.json", "notes.txt", "events.out.tfevents.5.h"))
    (tmp_path / "config.json").write_text(json.dumps({"method": "mtl", "dataset": {}}))
    assert manifest.written(str(tmp_path)) == [
        "config.json",
        "results.json",
        "events.out.tfevents.5.h",
    ]
    (tmp_path / "config.json").write_text(json.dumps({"name": "my-package"}))  # not ours
    assert manifest.written(str(tmp_path)) is None


@pytest.mark.parametrize(
    "text", ["[1, 2]", "{}", '{"written_by": "tag_jax", "names": ["../x"]}', '{"names": ', ""]
)
def test_a_damaged_manifest_is_one_line(tmp_path, text):
    (tmp_path / ".tag_jax_manifest.json").write_text(text)
    with pytest.raises(UserError) as info:
        manifest.written(str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/.tag_jax_manifest.json is damaged (")
    assert "\n" not in message and cli.one_line(info.value) == message


def test_leftover_temporary_files_of_atomic_writes_are_removed_and_no_others(tmp_path):
    make_files(tmp_path, ("notes.tmp", ".mine.tmp", "checkpoints/3/checksums.json"))
    reporting.write_json_atomic(str(tmp_path / "x.json"), {})  # the pattern is tempfile's
    leftovers = []
    for folder in (tmp_path, tmp_path / "checkpoints" / "3"):
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".", suffix=".tmp", delete=False) as f:
            leftovers.append(f.name)  # a write killed before its rename
    assert sorted(manifest.remove_temporaries(str(tmp_path))) == sorted(leftovers)
    assert not any(os.path.exists(p) for p in leftovers)
    assert (tmp_path / "notes.tmp").exists() and (tmp_path / ".mine.tmp").exists()


# --- divergence does not depend on how often losses are logged (tag_jax.divergence) ---


def first_blowup(losses, window=divergence.BLOWUP_WINDOW, factor=divergence.LOSS_BLOWUP):
    """The first step (1-based) whose last `window` losses have a median above factor x the
    step-1 loss, by a plain loop; None if there is none."""
    for step in range(window, len(losses) + 1):
        if np.median(losses[step - window : step]) > factor * losses[0]:
            return step
    return None


def verdict(losses, check_every):
    """The step at which a LossMonitor checked every `check_every` steps stops the run."""
    monitor = divergence.LossMonitor(("a", "b"), "/w", learning_rate=0.1)
    try:
        for step, loss in enumerate(losses, start=1):
            monitor.add(step, jnp.asarray([loss / 2, loss / 2]))
            if step % check_every == 0:
                monitor.check(up_to=step)
        monitor.check()
    except TrainingDiverged as e:
        return int(re.search(r"steps to step (\d+)\)", str(e)).group(1))
    return None


def test_the_blowup_verdict_is_the_same_at_every_logging_frequency():
    rng = np.random.default_rng(0)
    falling = 13.0 * np.exp(-np.arange(300) / 150) * (1 + 0.05 * rng.standard_normal(300))
    spiky = falling.copy()
    spiky[1] = 100.9  # the quick start's transient at step 2 (7.7x step 1)
    spiky[[40, 41]] = 60.0  # and a short burst later
    blowing_up = falling.copy()
    blowing_up[150:] *= np.linspace(1, 40, 150)  # grows and stays up
    assert first_blowup(spiky) is None
    expected = first_blowup(blowing_up)
    assert expected is not None and expected > 150
    exploding = 4.5 * 25.0 ** np.arange(8)  # lr 5 on the tiny run: x25 per step
    assert first_blowup(exploding) == divergence.BLOWUP_WINDOW
    for check_every in (1, 3, 20, 100, 1000):
        assert verdict(falling, check_every) is None
        assert verdict(spiky, check_every) is None, check_every
        assert verdict(blowing_up, check_every) == expected, check_every
        assert verdict(exploding, check_every) == divergence.BLOWUP_WINDOW


def test_a_non_finite_loss_is_caught_at_its_step_whatever_the_logging():
    losses = [13.0, 12.0, float("nan"), 11.0]
    for check_every in (1, 100):
        monitor = divergence.LossMonitor(("a",), "/w")
        with pytest.raises(TrainingDiverged, match=r"non-finite at step 3;"):
            for step, loss in enumerate(losses, start=1):
                monitor.add(step, jnp.asarray([loss]))
                if step % check_every == 0:
                    monitor.check(up_to=step)
            monitor.check()


def test_the_loss_trend_survives_a_checkpoint_and_refuses_a_damaged_record():
    trend = divergence.LossTrend()
    for loss in range(1, 31):
        trend = trend.add(float(loss))
    assert trend.first == 1.0 and trend.recent == (26.0, 27.0, 28.0, 29.0, 30.0)
    assert divergence.LossTrend.from_json(json.loads(json.dumps(trend.to_json()))) == trend
    assert divergence.LossTrend.from_json({}) == divergence.LossTrend()
    for bad in ({"first": "x"}, {"recent": [1] * 6}, {"recent": [None]}, {"other": []}):
        with pytest.raises(TypeError, match="loss_trend must hold 'first'"):
            divergence.LossTrend.from_json(bad)


LOOP_RECORD_CASES = [
    ("early_stopping empty", {"early_stopping": {}}, "early_stopping must hold equal-length"),
    (
        "early_stopping lists of two lengths",
        {
            "early_stopping": {
                "best_loss": [1.0],
                "best_epoch": [1, 2],
                "epochs_without_improvement": [0],
            }
        },
        "early_stopping must hold equal-length",
    ),
    ("history of numbers", {"history": [1]}, "history must hold records of epoch"),
    ("history record missing keys", {"history": [{"epoch": 1}]}, "history must hold records"),
    ("epoch negative", {"epoch": -1}, "epoch must be an integer >= 0"),
    ("loss trend of text", {"loss_trend": {"first": "x"}}, "loss_trend must hold 'first'"),
    ("an unknown field", {"extra": 1}, r"unknown field\(s\) \['extra'\]"),
]


@pytest.mark.parametrize(
    "change, what", [c[1:] for c in LOOP_RECORD_CASES], ids=[c[0] for c in LOOP_RECORD_CASES]
)
def test_a_loop_record_of_the_wrong_shape_is_refused_when_read(change, what):
    record = LoopState.fresh(early_stopping.initial_record(2)).to_json()
    assert LoopState.from_json(json.loads(json.dumps(record))).to_json() == record
    with pytest.raises(TypeError, match=what):
        LoopState.from_json({**record, **change})


def test_a_study_left_by_a_version_without_manifests_is_adopted(tmp_path):
    run_config = json.dumps({"method": "mtl", "dataset": {}})
    for stage in ("mtl", "seed_1/mtl"):
        make_files(tmp_path, (f"{stage}/results.json",))
        (tmp_path / stage / "config.json").write_text(run_config)
    make_files(tmp_path, ("report.md", "notes.txt", "seed_1/mine.txt", "other/x.txt"))
    (tmp_path / "report.json").write_text(json.dumps({"rows": [], "stages": {}}))
    assert manifest.written(str(tmp_path)) == ["report.json", "report.md", "mtl", "seed_1"]
    (tmp_path / "report.json").write_text(json.dumps({"rows": []}))  # no study's report
    assert manifest.written(str(tmp_path)) is None
