"""Bad inputs and faults: one line, the right exit status, and the workdir left as it was.

Every case in CASES is tried in-process against a copy of a finished run's
workdir: it must raise a UserError (exit status 2; TrainingDiverged: 3) whose
message is one line and names the problem, before any file there changes. The
command lines turn such an error into `error: <message>` on stderr and its exit
status (tested with real processes below, with the lock, hangs and kills).
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, load_config
from helpers import run_cli, tiny

from tag_jax import (
    checkpointing,
    cli,
    config_checks,
    config_help,
    data,
    default_config,
    divergence,
    reporting,
    train,
)
from tag_jax import workdir as workdirs
from tag_jax.errors import TrainingDiverged, UserError

TASKS = ("g0_t0", "g0_t1", "g1_t0", "g1_t1")


def snapshot(folder) -> dict:
    """{relative path: (mode, bytes)} of every file under folder ({} if there is none)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = (os.stat(path).st_mode, f.read())
    return files


def assert_one_line(error: UserError, match: str, exit_code: int = 2) -> None:
    message = str(error)
    assert re.search(match, message), message
    assert "\n" not in message and cli.one_line(error) == message
    assert error.exit_code == exit_code


def assert_refused(config, workdir, match, exit_code=2):
    """The run raises a one-line UserError matching `match` and leaves workdir as it was."""
    before = snapshot(workdir)
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, str(workdir))
    assert_one_line(info.value, match, exit_code)
    assert snapshot(workdir) == before


# --- every config value, checked before data is read ---

CONFIG_CASES = [
    (
        "negative learning rate",
        {"optimizer.learning_rate": -0.1},
        r"config.optimizer.learning_rate must be > 0 \(a finite number\), got -0.1",
    ),
    ("zero learning rate", {"optimizer.learning_rate": 0.0}, r"learning_rate must be .* got 0.0"),
    (
        "NaN learning rate",
        {"optimizer.learning_rate": float("nan")},
        r"learning_rate must be > 0 \(a finite number\), got nan",
    ),
    ("infinite learning rate", {"optimizer.learning_rate": float("inf")}, r"got inf"),
    (
        "decay_every_epochs=0",
        {"optimizer.decay_every_epochs": 0},
        r"config.optimizer.decay_every_epochs must be > 0 \(a finite number\), got 0",
    ),
    (
        "decay_factor=0",
        {"optimizer.decay_factor": 0.0},
        r"decay_factor must be in \(0, 1\] \(a number\)",
    ),
    ("decay_factor above 1", {"optimizer.decay_factor": 1.5}, r"decay_factor must be"),
    (
        "momentum 1",
        {"optimizer.momentum": 1.0},
        r"optimizer.momentum must be in \[0, 1\) \(a number\)",
    ),
    ("negative weight decay", {"optimizer.weight_decay": -1e-4}, r"weight_decay must be"),
    ("unknown optimizer", {"optimizer.name": "rmsprop"}, r"unknown config.optimizer.name"),
    ("unknown schedule", {"optimizer.schedule": "linear"}, r"unknown config.optimizer.schedule"),
    ("seed=-1", {"seed": -1}, r"config.seed must be in \[0, 4294967295\] \(an integer\), got -1"),
    (
        "model.width=0",
        {"model.width": 0},
        r"config.model.width must be in \[1, 4096\] \(an integer\), got 0",
    ),
    (
        "num_classes=1",
        {"model.num_classes": 1},
        r"config.model.num_classes must be >= 2 \(an integer\), got 1",
    ),
    ("bn_epsilon=0", {"model.bn_epsilon": 0.0}, r"bn_epsilon must be > 0 \(a finite number\)"),
    (
        "bn_momentum above 1",
        {"model.bn_momentum": 1.5},
        r"bn_momentum must be in \[0, 1\) \(a number\)",
    ),
    ("unknown conv", {"model.conv": "fft"}, r"unknown config.model.conv"),
    ("dtype float16", {"dtype": "float16"}, r"unknown config.dtype"),
    (
        "image_size smaller than the trunk",
        {"image_size": 4},
        r"config.image_size must be in \[5, 4096\] \(an integer\), got 4",
    ),
    (
        "group_sizes=()",
        {"dataset.group_sizes": ()},
        r"config.dataset.group_sizes must be a non-empty tuple",
    ),
    ("an empty planted group", {"dataset.group_sizes": (2, 0)}, r"group_sizes must be"),
    (
        "num_train=0",
        {"dataset.num_train": 0},
        r"config.dataset.num_train must be >= 1 \(an integer\), got 0",
    ),
    (
        "label_noise above 1",
        {"dataset.label_noise": 1.5},
        r"label_noise must be in \[0, 1\] \(a number\)",
    ),
    ("negative pixel noise", {"dataset.noise": -1.0}, r"config.dataset.noise must be"),
    ("unknown dataset", {"dataset.name": "imagenet"}, r"unknown config.dataset.name"),
    (
        "a task listed twice",
        {"tasks": ("g0_t0", "g0_t0")},
        r"config.tasks must be distinct non-empty task names",
    ),
    ("an unknown task", {"tasks": ("g0_t0", "nope")}, r"unknown task\(s\) \['nope'\]"),
    ("batch_size=0", {"batch_size": 0}, r"config.batch_size must be >= 1 \(an integer\), got 0"),
    ("eval_batch_size=-1", {"eval_batch_size": -1}, r"eval_batch_size must be >= 1 \(an integer\)"),
    ("num_epochs=0", {"num_epochs": 0}, r"config.num_epochs must be >= 1 \(an integer\)"),
    ("max_steps=0", {"max_steps": 0}, r"config.max_steps must be -1 \(no limit\) or"),
    ("log_every_steps=0", {"log_every_steps": 0}, r"log_every_steps must be >= 1 \(an integer\)"),
    (
        "keep_checkpoints=0",
        {"keep_checkpoints": 0},
        r"keep_checkpoints must be >= 1 \(an integer\)",
    ),
    (
        "negative checkpoint_every_steps",
        {"checkpoint_every_steps": -1},
        r"checkpoint_every_steps must be >= 0 \(an integer\)",
    ),
    ("negative patience", {"early_stopping.patience": -1}, r"patience must be >= 0 \(an integer\)"),
    ("mesh.data=0", {"mesh.data": 0}, r"config.mesh.data must be -1 \(all devices\)"),
    (
        "batch larger than the split, remainder dropped",
        {"batch_size": 200, "drop_remainder": True},
        r"batch_size 200 is larger than the training split \(96 examples\)",
    ),
    ("unknown method", {"method": "nope"}, r"unknown config.method 'nope'"),
    (
        "every_n_steps=0",
        {"method": "tag", "affinity.every_n_steps": 0},
        r"config.affinity.every_n_steps must be >= 1 \(an integer\)",
    ),
    (
        "every_n_steps as long as the run",
        {"method": "tag", "affinity.every_n_steps": 3},
        r"every_n_steps=3 is not below the run's 3 steps: only step 0 would be measured",
    ),
    (
        "selection.max_groups=(0,)",
        {"method": "tag", "selection.max_groups": (0,)},
        r"config.selection.max_groups must be a non-empty tuple of k values >= 1, got \(0,\)",
    ),
    (
        "selection.max_groups=()",
        {"method": "cs", "selection.max_groups": ()},
        r"selection.max_groups must be",
    ),
    (
        "selection.time_limit=-1",
        {"method": "tag", "selection.time_limit": -1.0},
        r"config.selection.time_limit must be > 0 \(a finite number\), got -1.0",
    ),
    (
        "unknown affinity strategy",
        {"method": "cs", "affinity.strategy": "magic"},
        r"unknown config.affinity.strategy",
    ),
    (
        "momentum lookahead with adam",
        {"method": "tag", "affinity.lookahead": "momentum", "optimizer.name": "adam"},
        r"lookahead='momentum' needs",
    ),
    (
        "dmtg.num_groups=0",
        {"method": "dmtg", "dmtg.num_groups": 0},
        r"config.dmtg.num_groups must be >= 1 \(an integer\)",
    ),
    (
        "dmtg fine-tunes every epoch",
        {"method": "dmtg", "dmtg.finetune_epochs": 1},
        r"finetune_epochs must be in \[0, config.num_epochs\)",
    ),
    (
        "more random groups than tasks",
        {"method": "random", "groups.num_random_groups": 9},
        r"num_random_groups 9 must be in \[1, 4\]",
    ),
    (
        "a group with an unknown task",
        {"method": "groups", "groups.groups": (("g0_t0", "nope"),)},
        r"group \['g0_t0', 'nope'\] must be non-empty, without repeats",
    ),
    ("neither groups nor groups_file", {"method": "groups"}, r"needs exactly one of"),
    (
        "groups_file missing",
        {"method": "groups", "groups.groups_file": "/no/such/groups.json"},
        r"groups_file '/no/such/groups.json' does not exist",
    ),
    (
        "unknown HOA score",
        {"method": "pairs", "groups.hoa_score": "speed"},
        r"unknown config.groups.hoa_score",
    ),
    (
        "negative gradnorm alpha",
        {"method": "gradnorm", "baselines.gradnorm_alpha": -1.0},
        r"gradnorm_alpha must be >= 0 \(a finite number\)",
    ),
]


@pytest.mark.parametrize(
    "overrides, match", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_config_value(workdir, overrides, match):
    config = tiny()
    config.update_from_flattened_dict(overrides)
    assert_refused(config, workdir, match)


def test_every_config_key_has_one_schema_entry_and_every_entry_a_key():
    keys = {key for key, _ in config_help.flat_items(default_config.get_base_config())}
    declared = [block.dotted(key) for block in default_config.blocks() for key in block.values]
    assert len(declared) == len(set(declared))  # no key declared twice
    # config.method is checked by the registry (tag_jax.methods), study.methods by the study plan
    assert keys - set(declared) == {"method", "study.methods"}
    assert set(declared) <= keys


def test_the_defaults_pass_every_value_check_and_rule():
    config_checks.check(load_config("tiny_test"), default_config.blocks())


def test_the_checker_names_key_value_and_what_is_valid_then_runs_the_rules():
    def no_more_b_than_a(config):
        if config.x.b > config.x.a:
            raise UserError("config.x.b must not exceed config.x.a")

    block = config_checks.Block(
        "x",
        None,
        {
            "a": config_checks.integer(0, 3),
            "b": config_checks.number(0, low_open=True),
            "kind": config_checks.Choice(("p", "q")),
            "absent": config_checks.BOOL,  # keys a config lacks are skipped
        },
        rules=(no_more_b_than_a,),
    )
    cases = [
        ({"a": 4}, r"^config.x.a must be in \[0, 3\] \(an integer\), got 4$"),
        ({"a": True}, r"^config.x.a must be in \[0, 3\] \(an integer\), got True$"),
        ({"b": 0.0}, r"^config.x.b must be > 0 \(a finite number\), got 0.0$"),
        ({"b": "1"}, r"^config.x.b must be > 0 \(a finite number\), got '1'$"),
        ({"kind": "r"}, r"^unknown config.x.kind 'r'; choose one of \('p', 'q'\)$"),
        ({"a": 1, "b": 2.0}, r"^config.x.b must not exceed config.x.a$"),
    ]
    for change, match in cases:
        config = ml_collections.ConfigDict({"x": {"a": 2, "b": 1.0, "kind": "p", **change}})
        with pytest.raises(UserError, match=match):
            config_checks.check(config, (block,))
    config_checks.check(ml_collections.ConfigDict({"x": {"a": 2, "b": 1.0, "kind": "q"}}), (block,))


# --- data files (npz) ---


def write_npz(path, *, n=40, size=8, channels=3, names=("a", "b"), labels=None, **arrays):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, channels), dtype=np.uint8)
    if labels is None:
        labels = rng.integers(0, 2, (n, len(names)))
    np.savez(path, **{"images": images, "labels": labels, "task_names": np.array(names), **arrays})
    return str(path)


def truncated(path):
    write_npz(path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return str(path)


def npy(path):
    np.save(path, np.zeros((4, 8, 8, 3), np.uint8))
    return str(path)


def not_a_zip(path):
    path.write_text("images,labels\n1,2\n")
    return str(path)


def pickled(path):
    np.savez(
        path,
        images=np.zeros((40, 8, 8, 3), np.uint8),
        labels=np.zeros((40, 1), int),
        task_names=np.array([{"name": "a"}], dtype=object),
    )
    return str(path)


NPZ_CASES = [
    ("npz file missing", lambda p: str(p / "none.npz"), r"none.npz: file not found"),
    ("npz path empty", lambda p: "", r"config.dataset.name='npz' needs config.dataset.path"),
    ("npz path is a folder", lambda p: str(p), r"not a readable .npz file|a folder"),
    ("npz truncated", lambda p: truncated(p / "cut.npz"), r"cut.npz: not a readable .npz file"),
    ("npz not a zip", lambda p: not_a_zip(p / "text.npz"), r"text.npz: not a readable .npz file"),
    (".npy given", lambda p: npy(p / "images.npy"), r"images.npy: a single array \(.npy\)"),
    (
        "npz with a pickled array",
        lambda p: pickled(p / "pickled.npz"),
        r"pickled.npz: not a readable .npz file \(ValueError: Object arrays cannot be loaded",
    ),
    (
        "npz without labels",
        lambda p: (
            np.savez(p / "nolabels.npz", images=np.zeros((4, 8, 8, 3)), task_names=np.array(["a"]))
            or str(p / "nolabels.npz")
        ),
        r"missing array 'labels'",
    ),
    (
        "npz with no examples",
        lambda p: write_npz(p / "empty.npz", n=0),
        r"empty.npz: images holds no examples \(N = 0\)",
    ),
    (
        "npz with no tasks",
        lambda p: write_npz(p / "notasks.npz", names=(), labels=np.zeros((40, 0), int)),
        r"labels has no tasks \(T = 0 columns\)",
    ),
    (
        "npz with duplicate task names",
        lambda p: write_npz(p / "dup.npz", names=("a", "a")),
        r"task_names must be distinct; \['a'\] appear more than once",
    ),
    (
        "npz images smaller than the trunk",
        lambda p: write_npz(p / "small.npz", size=4),
        r"images are 4x4 with 3 channel\(s\); the trunk needs at least 5x5 pixels",
    ),
    (
        "npz images with zero channels",
        lambda p: write_npz(p / "nochannels.npz", channels=0),
        r"images are 8x8 with 0 channel\(s\)",
    ),
    (
        "npz labels beyond num_classes",
        lambda p: write_npz(p / "classes.npz", labels=np.full((40, 2), 5)),
        r"labels must be in \[0, 2\) \(config.model.num_classes\), got \[5, 5\]",
    ),
    (
        "npz with NaN images",
        lambda p: (
            np.savez(
                p / "nan.npz",
                images=np.full((40, 8, 8, 3), np.nan, np.float32),
                labels=np.zeros((40, 1), int),
                task_names=np.array(["a"]),
            )
            or str(p / "nan.npz")
        ),
        r"images contain NaN or infinite values",
    ),
    (
        "npz with a single-class task",
        lambda p: write_npz(
            p / "one.npz", labels=np.stack([np.arange(40) % 2, np.ones(40, int)], 1)
        ),
        r"task\(s\) b \(only class 1\) have a single class in the train split",
    ),
    (
        "npz with a bad split",
        lambda p: write_npz(p / "split.npz", split=np.full(40, 7)),
        r"split must be \(N,\) with values 0 \(train\), 1 \(validation\), 2 \(test\)",
    ),
]


@pytest.mark.parametrize("make, match", [c[1:] for c in NPZ_CASES], ids=[c[0] for c in NPZ_CASES])
def test_bad_npz_file(workdir, tmp_path, make, match):
    data = tmp_path / "data"
    data.mkdir()
    config = tiny()
    config.dataset.name = "npz"
    config.dataset.path = make(data)
    assert_refused(config, workdir, match)


# --- a groups.json given to the 'groups' method ---

GROUPS_FILE_CASES = [
    ("groups.json not JSON", "{'selections':", r"is unreadable \(not JSON\)"),
    ("groups.json deeply nested", "[" * 100_000 + "]" * 100_000, r"is unreadable \(not JSON\)"),
    ("groups.json a list", [1, 2], r"is not a groups.json \(it needs 'selections'"),
    ("groups.json without selections", {"groups": [["g0_t0"]]}, r"is not a groups.json"),
    (
        "groups.json selection without groups",
        {"selections": [{"max_groups": 2}]},
        r"is not a groups.json",
    ),
    (
        "groups.json groups not lists of names",
        {"selections": [{"max_groups": 2, "groups": [3]}]},
        r"is not a groups.json",
    ),
    (
        "groups.json without the k asked",
        {
            "selections": [
                {"max_groups": 3, "groups": [list(TASKS)]},
                {"max_groups": 4, "groups": [list(TASKS)]},
            ]
        },
        r"has selections for k in \[3, 4\]; set config.groups.max_groups",
    ),
    (
        "groups.json assigning to a group it lacks",
        {
            "selections": [
                {"max_groups": 2, "groups": [list(TASKS)], "assignment": {"g0_t0": ["g0_t0"]}}
            ]
        },
        r"task 'g0_t0' is assigned to \['g0_t0'\], which is not one of the selection's groups",
    ),
]


def test_a_dataset_with_an_empty_split_is_refused(workdir, monkeypatch):
    """A Dataset whose validation split is empty (a custom source) fails at set-up, not after
    training with `None['count']`."""
    config = tiny()
    full = data.load_dataset(config)
    images, labels = full.splits["validation"]
    emptied = data.ArrayDataset(
        full.task_names, {**full.splits, "validation": (images[:0], labels[:0])}
    )
    monkeypatch.setattr(data, "load_dataset", lambda _: emptied)
    assert_refused(
        config,
        workdir,
        r"the validation split\(s\) of config.dataset.name=.* hold no "
        r"examples",
    )


@pytest.mark.parametrize(
    "content, match", [c[1:] for c in GROUPS_FILE_CASES], ids=[c[0] for c in GROUPS_FILE_CASES]
)
def test_bad_groups_file(workdir, tmp_path, content, match):
    path = tmp_path / "groups.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    config = tiny()
    config.method = "groups"
    config.groups.groups_file = str(path)
    config.groups.max_groups = 2
    assert_refused(config, workdir, match)


# --- the workdir ---


def test_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(tiny(), str(path))
    assert_one_line(info.value, r"--workdir '.*file' is a file; pick a folder")
    assert path.read_text() == "x"


def test_workdir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(tiny(), str(tmp_path / "file" / "run"))
    assert_one_line(info.value, r"cannot write to --workdir .*pick a writable folder")


def test_workdir_path_too_long_for_checkpoints(tmp_path):
    deep = str(tmp_path / "/".join(["d" * 200] * 20))
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(tiny(), deep)
    assert_one_line(
        info.value, r"--workdir path is \d+ characters long; files under it would exceed"
    )
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match="folder name of 300 characters"):
        train.train_and_evaluate(tiny(), str(tmp_path / ("x" * 300)))


def test_workdir_holding_another_run(workdir):
    config = tiny()
    config.method = "cs"
    assert_refused(
        config,
        workdir,
        r"holds another run \(method='mtl'\); use a new --workdir, or "
        r"re-run with --restart",
    )


def test_workdir_with_an_unreadable_config_json(workdir):
    (workdir / "config.json").write_text("{")
    assert_refused(tiny(), workdir, r"config.json is unreadable .*--restart")


def test_busy_workdir(workdir):
    lock = workdirs.acquire(str(workdir))
    try:
        assert_refused(
            tiny(),
            workdir,
            rf"--workdir {workdir} is in use by process {os.getpid()} on "
            r".* since .*; wait for that run to end",
        )
    finally:
        lock.release()


def only_step_dir(workdir):
    manager = checkpointing.create_manager(str(workdir), 2)
    return manager, manager.latest_step()


def test_checkpoint_with_64_bytes_flipped(workdir):
    _, step = only_step_dir(workdir)
    folder = workdir / "checkpoints" / str(step)
    data = max((p for p in (folder / "state").rglob("*") if p.is_file()), key=os.path.getsize)
    content = bytearray(data.read_bytes())
    middle = len(content) // 2
    content[middle : middle + 64] = bytes(b ^ 0xFF for b in content[middle : middle + 64])
    data.write_bytes(bytes(content))
    assert_refused(
        tiny(),
        workdir,
        rf"checkpoint {folder} is damaged \(state/.* differs from its "
        r"checksum\); delete that folder",
    )


def test_checkpoint_missing_a_file(workdir):
    _, step = only_step_dir(workdir)
    folder = workdir / "checkpoints" / str(step)
    (folder / "state" / "_sharding").unlink()
    assert_refused(
        tiny(), workdir, rf"checkpoint {folder} is damaged \(state/_sharding is missing\)"
    )


def test_results_without_a_checkpoint_train_again_and_say_so(workdir, caplog):
    shutil.rmtree(workdir / "checkpoints")
    with caplog.at_level("WARNING"):
        results = train.train_and_evaluate(tiny(), str(workdir))
    assert results["steps"] == 3
    assert any(
        "holds results but no checkpoint: training again from step 0" in r.getMessage()
        for r in caplog.records
    )


def test_checkpoint_holding_nan_weights(workdir):
    manager, step = only_step_dir(workdir)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    )
    poisoned = jax.tree.map(
        lambda x: np.full_like(x, np.nan) if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
        restored.state,
    )
    checkpointing.save(manager, step + 1, poisoned, restored.meta)  # valid checksums, NaN values
    folder = workdir / "checkpoints" / str(step + 1)
    assert_refused(
        tiny(),
        workdir,
        rf"checkpoint {folder} is damaged \(it holds NaN or infinite "
        r"values\); delete that folder",
    )


def test_failed_checkpoint_write_is_one_line(workdir, monkeypatch):
    """A full disk, as the writer sees it (the real one: test_full_disk_ends_in_seconds)."""

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
    config = tiny()
    config.num_epochs = 2
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, str(workdir))
    assert_one_line(
        info.value,
        r"cannot write checkpoint .*checkpoints/6 \(OSError: \[Errno 28\] No "
        r"space left on device\); free disk space",
    )
    monkeypatch.undo()
    assert train.train_and_evaluate(config, str(workdir))["epochs"] == 2  # resumes once it can


# --- divergence ---


@pytest.mark.parametrize(
    "method, learning_rate",
    [
        ("tag", 5.0),
        ("cs", 1e3),
        ("dmtg", 1e3),
        pytest.param("tag", 1e3, marks=pytest.mark.slow),
        pytest.param("tag", 1e6, marks=pytest.mark.slow),
        pytest.param("mtl", 1e6, marks=pytest.mark.slow),
    ],
)
def test_divergence_stops_the_run_without_outputs(tmp_path, method, learning_rate):
    config = tiny()
    config.num_epochs = 2
    config.method = method
    config.dmtg.num_groups = 2
    config.optimizer.learning_rate = learning_rate
    with pytest.raises(TrainingDiverged) as info:
        train.train_and_evaluate(config, str(tmp_path))
    assert_one_line(info.value, r"the run diverged|non-finite", exit_code=3)
    assert not {"groups.json", "affinity.json", "results.json"} & set(os.listdir(tmp_path))


def test_a_diverging_resume_keeps_the_results_and_the_config_they_were_made_with(workdir):
    config = tiny()
    config.num_epochs = 3
    config.optimizer.learning_rate = 1e30
    kept = {name: (workdir / name).read_bytes() for name in ("config.json", "results.json")}
    with pytest.raises(TrainingDiverged):
        train.train_and_evaluate(config, str(workdir))
    assert {name: (workdir / name).read_bytes() for name in kept} == kept
    config.optimizer.learning_rate = 0.1
    results = train.train_and_evaluate(config, str(workdir))  # new results, with their config
    saved = json.load(open(workdir / "config.json"))
    assert results["epochs"] == saved["num_epochs"] == 3
    assert saved["optimizer"]["learning_rate"] == 0.1


def test_loss_blowup_and_chance_rules():
    config = tiny()
    divergence.check_loss_blowup(divergence.LossTrend(1.0, (3.9,) * 5), 40, 0.1)
    divergence.check_loss_blowup(divergence.LossTrend(1.0, (1e9,) * 4), 4, 0.1)  # too early
    divergence.check_loss_blowup(divergence.LossTrend(1.0, (9, 9, 1, 1, 1)), 40, 0.1)  # a spike
    with pytest.raises(
        TrainingDiverged,
        match=r"training loss 4.1 \(median of the 5 steps to step 40\) is 4.1x its value 1 at "
        r"step 1: the run diverged; lower config.optimizer",
    ):
        divergence.check_loss_blowup(divergence.LossTrend(1.0, (9, 4.1, 4.1, 4.1, 1)), 40, 0.1)
    uniform = np.log(2)
    divergence.check_above_chance([uniform] * 4, 299, config)  # too early to tell
    divergence.check_above_chance(
        [uniform, uniform, 0.5, uniform], 1000, config
    )  # one task learned
    with pytest.raises(
        TrainingDiverged,
        match=r"after 300 steps no task does better on validation "
        r"than a uniform guess",
    ):
        divergence.check_above_chance([uniform * 0.99, 0.8, 7.0, 1e3], 300, config)
    with pytest.raises(TrainingDiverged, match="validation loss became non-finite at step 3"):
        divergence.check_above_chance([0.1, np.nan, 0.1, 0.1], 3, config)
    config.model.bn_momentum = 0.999  # batch-norm averages settle later: wait longer
    divergence.check_above_chance([uniform] * 4, 2999, config)


def test_nan_loss_before_any_checkpoint_says_none_is_kept():
    with pytest.raises(
        TrainingDiverged, match=r"non-finite at step 2; no checkpoint was saved yet"
    ):
        divergence.check_finite(np.array([np.nan]), ("a",), 2, "/w", last_saved=None)
    with pytest.raises(
        TrainingDiverged,
        match=r"the last checkpoint \(step 3\) in /w/checkpoints is "
        "kept",
    ):
        divergence.check_finite(np.array([np.inf]), ("a",), 5, "/w", last_saved=3)
    with pytest.raises(
        TrainingDiverged,
        match=r"at step 4; that is the loss of the last "
        r"checkpoint's parameters: lower .*, delete "
        r"/w/checkpoints/3 and re-run \(it resumes from an "
        r"earlier checkpoint, if any\), or .*--restart",
    ):
        divergence.check_finite(np.array([np.inf]), ("a",), 4, "/w", last_saved=3)


def test_a_checkpoint_whose_parameters_diverged_is_named_as_the_culprit(tmp_path):
    config = tiny()
    config.checkpoint_every_steps = 1
    config.optimizer.learning_rate = 1e36  # huge but finite parameters after step 1
    with pytest.raises(TrainingDiverged) as info:
        train.train_and_evaluate(config, str(tmp_path))
    assert_one_line(
        info.value,
        r"at step 2; that is the loss of the last checkpoint's parameters: "
        r"lower .*, delete .*checkpoints/1 and re-run",
        exit_code=3,
    )
    config.optimizer.learning_rate = 0.1  # resuming is never told to resume from that one
    with pytest.raises(TrainingDiverged) as again:
        train.train_and_evaluate(config, str(tmp_path))
    assert "delete" in str(again.value) and "re-run to resume" not in str(again.value)


def test_non_finite_parameters_are_never_saved(tmp_path, monkeypatch):
    set_up = train.set_up

    def set_up_with_a_step_that_breaks_the_parameters(*args, **kwargs):
        run = set_up(*args, **kwargs)
        step = run.train_step
        return dataclasses.replace(
            run,
            train_step=lambda state, batch: (
                lambda new, metrics: (
                    new.replace(params=jax.tree.map(lambda p: p * np.nan, new.params)),
                    metrics,
                )
            )(*step(state, batch)),
        )

    monkeypatch.setattr(train, "set_up", set_up_with_a_step_that_breaks_the_parameters)
    config = tiny()
    config.checkpoint_every_steps = 1
    with pytest.raises(TrainingDiverged) as info:
        train.train_and_evaluate(config, str(tmp_path))
    assert_one_line(
        info.value,
        r"the parameters became non-finite by step 1 and are not saved; no "
        r"checkpoint was saved yet: lower config.optimizer",
        exit_code=3,
    )
    assert not os.listdir(tmp_path / "checkpoints")


# --- config files and the selection command line ---

CONFIG_FILE_CASES = [
    ("missing", None, r"--config=.*missing.py: no such file"),
    ("syntax error", "def get_config(:\n", r"syntax error at line 1"),
    (
        "fails to import",
        "import no_such_module_here\n",
        r"the file fails to load \(ModuleNotFoundError: No module named 'no_such_module_here'\)",
    ),
    ("no get_config", "x = 1\n", r"the file defines no get_config\(\)"),
    (
        "get_config raises",
        "def get_config():\n  raise RuntimeError('boom')\n",
        r"get_config\(\) raised RuntimeError: boom",
    ),
    (
        "get_config returns None",
        "def get_config():\n  pass\n",
        r"get_config\(\) must return an ml_collections.ConfigDict, got NoneType",
    ),
]


@pytest.mark.parametrize(
    "source, match", [c[1:] for c in CONFIG_FILE_CASES], ids=[c[0] for c in CONFIG_FILE_CASES]
)
def test_bad_config_file(tmp_path, source, match):
    path = tmp_path / "missing.py"
    if source is not None:
        path.write_text(source)
    with pytest.raises(UserError) as info:
        cli.load_config_file(str(path))
    assert_one_line(info.value, match)


def test_selection_cli_deeply_nested_json(tmp_path, capsys):
    from selection import cli as selection_cli  # pylint: disable=g-import-not-at-top

    path = tmp_path / "scores.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert selection_cli.main(["groups", "--scores", str(path), "--max-groups", "2"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --- starting over, metrics and file modes ---


def test_restart_starts_over_after_the_checks(workdir):
    (workdir / "notes.txt").write_text("mine")
    config = tiny()
    config.method = "uw"
    config.optimizer.learning_rate = -1.0
    with pytest.raises(UserError, match="learning_rate must be"):  # checks first: nothing deleted
        train.train_and_evaluate(config, str(workdir), restart=True)
    assert (workdir / "results.json").exists()
    config.optimizer.learning_rate = 0.1
    results = train.train_and_evaluate(config, str(workdir), restart=True)
    assert results["method"] == "uw" and results["steps"] == 3
    assert json.load(open(workdir / "config.json"))["method"] == "uw"
    assert (workdir / "notes.txt").read_text() == "mine"
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
    assert [
        json.loads(line)["step"] for line in open(workdir / "metrics.jsonl") if "train/loss" in line
    ] == [2]


def test_rerun_logs_nothing_twice_and_files_are_0644(workdir):
    umask = os.umask(0o022)
    try:
        train.train_and_evaluate(tiny(), str(workdir))  # finished: evaluates and reports again
    finally:
        os.umask(umask)
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    keys = [(r["step"], tuple(sorted(r))) for r in records if len(r) > 1]
    assert len(keys) == len(set(keys)), keys
    assert sum("test/total_error" in r for r in records) == 1
    for name in ("config.json", "results.json", "metrics.jsonl"):
        assert os.stat(workdir / name).st_mode & 0o777 == 0o644, name
    assert reporting.count_records(workdir / "metrics.jsonl") == len(records)


# --- real processes: the command lines, the lock, hangs, full disks and kills ---


def error_lines(proc):
    return [line for line in proc.stderr.strip().splitlines() if line.strip()]


def test_cli_bad_value_and_bad_config_file_exit_2_with_one_line(tmp_path):
    proc, _ = run_cli(
        "--config=configs/tiny_test.py",
        f"--workdir={tmp_path / 'w'}",
        "--config.optimizer.learning_rate=-1",
    )
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "error: config.optimizer.learning_rate must be > 0 (a finite number), got -1.0"
    ]
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    proc, _ = run_cli(f"--config={broken}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2
    assert error_lines(proc) == [
        f"error: --config={broken}: syntax error at line 1: invalid syntax"
    ]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("after_seconds", [1.0, 7.0])  # importing; starting up and compiling
def test_ctrl_c_ends_with_status_130_and_one_line(tmp_path, after_seconds):
    """One SIGINT (Ctrl-C) at any moment: status 130 and the error line, never a crash at exit (it
    ended in a segmentation fault during compilation) nor a run that goes on (an interrupt raised
    in JAX's garbage-collection callback during import is swallowed)."""
    err = tmp_path / "stderr"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tag_jax.main",
                "--config=configs/tiny_test.py",
                f"--workdir={tmp_path / 'w'}",
                "--config.mesh.data=1",
                "--config.num_epochs=1000",
                "--config.early_stopping.patience=0",
            ],
            cwd=REPO,
            stderr=stderr,
            text=True,
        )
        time.sleep(after_seconds)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        finally:
            proc.kill()
    text = err.read_text()
    assert proc.returncode == 130, text[-2000:]
    assert text.strip().splitlines()[-1] == "error: interrupted; re-run the same command to resume"
    assert "Fatal Python error" not in text and "Segmentation" not in text


HOLDER = (
    "import sys, time\nfrom tag_jax import workdir\nworkdir.acquire(sys.argv[1])\n"
    "print('held', flush=True)\ntime.sleep(600)\n"
)


def test_lock_refuses_a_second_run_and_a_dead_holder_does_not_block(finished_run, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(workdir)
        proc, _ = run_cli(
            "--config=configs/tiny_test.py",
            f"--workdir={workdir}",
            "--config.mesh.data=1",
            "--config.num_epochs=1",
        )
        assert proc.returncode == 2
        assert len(error_lines(proc)) == 1
        assert re.fullmatch(
            rf"error: --workdir {workdir} is in use by process {holder.pid} on .*; wait "
            r"for that run to end \(or stop it\), or use another --workdir",
            error_lines(proc)[0],
        )
        assert snapshot(workdir) == before
    finally:
        holder.kill()  # SIGKILL: its lock is left to the kernel, its record stays in the file
        holder.wait()
    assert train.train_and_evaluate(tiny(), str(workdir))["epochs"] == 1
    assert f"The run before (process {holder.pid} on" in caplog.text
    assert (workdir / ".lock").read_bytes() == b""  # released at the end


def make_unwritable(folder) -> bool:
    """Makes folder refuse new files (chmod, or for root the immutable attribute); False if not."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        return False
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return True
    (folder / "probe").unlink()
    return False


def make_writable(folder) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    os.chmod(folder, 0o755)


def test_read_only_checkpoints_end_in_seconds_with_one_line(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    checkpoints = workdir / "checkpoints"
    if not make_unwritable(checkpoints):
        pytest.skip("cannot make a folder read-only here")
    try:
        proc, seconds = run_cli(
            "--config=configs/tiny_test.py",
            f"--workdir={workdir}",
            "--config.mesh.data=1",
            "--config.num_epochs=2",
            timeout=240,
        )
    finally:
        make_writable(checkpoints)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"error: cannot (write checkpoint {checkpoints}/6|use the checkpoints "
        rf"folder {checkpoints}) \(.*(Permission denied|Operation not permitted).*\)"
        r".*",
        last,
    ), last
    assert "Traceback" not in proc.stderr
    assert seconds < 120  # it used to wait forever on orbax's background threads


@pytest.mark.slow
def test_full_disk_ends_in_seconds_with_one_line(tmp_path):
    """A 96 KiB tmpfs in a private mount namespace: the first checkpoint does not fit."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        'mount -t tmpfs -o size=96k tmpfs "$0" || exit 77; exec "$1" -m tag_jax.main '
        '--config=configs/tiny_test.py --workdir="$0/run" --config.mesh.data=1'
    )
    start = time.time()
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, str(disk), sys.executable],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode == 77:
        pytest.skip("cannot mount a tmpfs here")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last, last
    assert "Traceback" not in proc.stderr
    assert time.time() - start < 120


DRIVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from conftest import load_config
from tag_jax import reporting
from tag_jax.study.run import run_study
workdir, target, when = sys.argv[1:4]
write = reporting.write_json_atomic
def write_or_die(path, obj):
  hit = os.path.relpath(path, workdir) == target
  if hit and when == "before":
    os.kill(os.getpid(), signal.SIGKILL)
  write(path, obj)
  if hit and when == "after":
    os.kill(os.getpid(), signal.SIGKILL)
reporting.write_json_atomic = write_or_die
config = load_config("tiny_study")
config.study.methods = tuple(sys.argv[4].split(","))
run_study(config, workdir)
"""


def kill_study_at(tmp_path, workdir, methods, points):
    """Runs the study in a fresh process for each (file, 'before'|'after') point, killed there."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=os.path.join(REPO, "tests")))
    for target, when in points:
        proc = subprocess.run(
            [sys.executable, str(driver), str(workdir), target, when, ",".join(methods)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == -signal.SIGKILL, (target, when, proc.stderr[-2000:])
        assert (workdir / target).exists() == (when == "after"), (target, when)


def finished_study(workdir, methods):
    config = load_config("tiny_study")
    config.study.methods = methods
    from tag_jax.study.run import run_study  # pylint: disable=g-import-not-at-top

    return run_study(config, str(workdir))


def test_study_continues_after_a_kill_right_after_a_stage(tmp_path, monkeypatch):
    workdir = tmp_path / "study"
    kill_study_at(tmp_path, workdir, ("mtl",), [("mtl/results.json", "after")])
    results = json.load(open(workdir / "mtl" / "results.json"))

    def no_training(*args):
        raise AssertionError(f"a finished stage was trained again: {args[1]}")

    monkeypatch.setattr(train, "train_and_evaluate", no_training)
    report = finished_study(workdir, ("mtl",))
    assert [r["label"] for r in report["rows"]] == ["mtl"]
    assert report["rows"][0]["test_total_error"] == results["test"]["total_error"]


@pytest.mark.slow
def test_study_survives_a_kill_at_every_stage_boundary(tmp_path):
    methods = ("mtl", "tag")  # stages mtl, tag, tag_k2
    expected = finished_study(tmp_path / "whole", methods)
    workdir = tmp_path / "killed"
    points = [
        (f"{stage}/results.json", when)
        for stage in ("mtl", "tag", "tag_k2")
        for when in ("before", "after")
    ] + [("report.json", "after")]
    kill_study_at(tmp_path, workdir, methods, points)
    report = finished_study(workdir, methods)
    for row, whole in zip(report["rows"], expected["rows"]):
        assert (row["groups"], row["test_total_error"]) == (
            whole["groups"],
            whole["test_total_error"],
        )
    for stage in ("mtl", "tag", "tag_k2"):
        assert report["stages"][stage]["steps"] == expected["stages"][stage]["steps"]
        logged = [
            json.loads(line)["step"]
            for line in open(workdir / stage / "metrics.jsonl")
            if "train/loss" in line
        ]
        assert len(logged) == len(set(logged)), stage
    assert os.path.exists(workdir / "report.md")


@pytest.mark.slow
def test_quick_start_tag_at_learning_rate_5_is_stopped(tmp_path):
    proc, _ = run_cli(
        "--config=configs/synthetic_tag.py",
        f"--workdir={tmp_path}",
        "--config.optimizer.learning_rate=5",
        timeout=1200,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "the run diverged" in last
    assert not {"groups.json", "affinity.json", "results.json"} & set(os.listdir(tmp_path))
