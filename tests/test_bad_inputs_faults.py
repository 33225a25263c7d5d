"""Bad inputs and faults of issue 32 (docs/faults.md): what the project did not write is never
deleted or overwritten, changed settings are never reused silently, what can be known before
training is checked before it, damaged run files are one line, SIGTERM checkpoints.

In-process cases run against a copy of a finished tiny run and must leave it byte for byte as it
was; the faults of a process (restart, overwrite, resume, memory, SIGTERM, study re-run) run the
command lines as real processes.
"""

import json
import os
import re
import shutil
import signal

import numpy as np
import pytest
from conftest import load_config
from helpers import (
    USER_FILES,
    error_lines,
    make_files,
    run_cli,
    snapshot,
    start_cli,
    tiny,
    wait_for,
)

from tag_jax import checkpointing, cli, manifest, train
from tag_jax.errors import UserError
from tag_jax.study.run import run_study

TINY = ("--config=configs/tiny_test.py", "--config.mesh.data=1")


def assert_refused(config, folder, match, exit_code=2):
    """The run raises a one-line UserError matching `match` and leaves folder as it was."""
    before = snapshot(folder)
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, str(folder))
    message = str(info.value)
    assert re.search(match, message), message
    assert "\n" not in message and cli.one_line(info.value) == message
    assert info.value.exit_code == exit_code
    assert snapshot(folder) == before


# --- the project deletes or overwrites only what it wrote (item 1) ---


def test_restart_in_a_folder_that_never_held_a_run_deletes_nothing(tmp_path):
    folder = tmp_path / "project"
    make_files(folder, USER_FILES)
    before = snapshot(folder)
    proc, _ = run_cli(*TINY, f"--workdir={folder}", "--restart")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc) == [
        f"error: --restart: --workdir {folder} holds files but no run of tag_jax (no "
        ".tag_jax_manifest.json); it deletes only what a run wrote: use a new or empty folder"
    ]
    assert snapshot(folder) == before  # not even a lock file


def test_a_run_never_overwrites_a_config_json_it_did_not_write(tmp_path):
    folder = tmp_path / "project"
    make_files(folder, ("config.json",))
    before = snapshot(folder)
    proc, _ = run_cli(*TINY, f"--workdir={folder}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc) == [
        f"error: --workdir {folder} holds config.json, which no run of tag_jax wrote there (it "
        "is not in .tag_jax_manifest.json): a run never overwrites it; move it away, or use "
        "another --workdir"
    ]
    assert snapshot(folder) == before


def test_restart_deletes_exactly_what_the_run_wrote(workdir):
    make_files(workdir, USER_FILES + ("notes.txt",))
    mine = {name: (workdir / name).read_bytes() for name in USER_FILES + ("notes.txt",)}
    proc, _ = run_cli(*TINY, f"--workdir={workdir}", "--config.num_epochs=1", "--restart")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {name: (workdir / name).read_bytes() for name in mine} == mine
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "my_model.pt"]
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1  # the old one deleted
    written = manifest.written(str(workdir))
    assert set(written) == {"checkpoints", "config.json", "metrics.jsonl", "results.json"} | {
        p.name for p in workdir.glob("events.out.tfevents.*")
    }


def test_a_resume_whose_checkpoints_became_a_file_writes_nothing(workdir):
    shutil.rmtree(workdir / "checkpoints")
    (workdir / "checkpoints").write_text("not a folder")
    before = snapshot(workdir)
    proc, _ = run_cli(*TINY, f"--workdir={workdir}", "--config.num_epochs=2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc)[-1] == (
        f"error: {workdir}/checkpoints is a file, not the folder of the run's checkpoints; move "
        "it away, or use another --workdir"
    )
    assert snapshot(workdir) == before  # metrics.jsonl not cut, config.json not rewritten


def test_leftover_temporary_files_are_removed_on_the_next_run(workdir):
    leftovers = [workdir / ".k2j4h1x9.tmp", workdir / "checkpoints" / "3" / ".a8b7c6d5.tmp"]
    make_files(workdir, [p.relative_to(workdir) for p in leftovers] + [".mine.tmp"])
    train.train_and_evaluate(tiny(), str(workdir))
    assert not any(p.exists() for p in leftovers)
    assert (workdir / ".mine.tmp").exists()


# --- settings changed on a resume (item 2) ---


def test_a_resume_with_a_changed_learning_rate_says_so_and_records_it(workdir, caplog):
    config = tiny()
    config.num_epochs = 2
    config.optimizer.learning_rate = 0.05
    results = train.train_and_evaluate(config, str(workdir))
    change = {
        "step": 3,
        "changes": {"num_epochs": [1, 2], "optimizer.learning_rate": [0.1, 0.05]},
    }
    assert results["changed_on_resume"] == [change]
    assert json.loads((workdir / "results.json").read_text())["changed_on_resume"] == [change]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["changed_on_resume"] == [change] and saved["optimizer"]["learning_rate"] == 0.05
    lines = [r.getMessage() for r in caplog.records if "changed settings" in r.getMessage()]
    assert lines == [
        "Resumed at step 3 with changed settings: num_epochs 1 -> 2, optimizer.learning_rate "
        "0.1 -> 0.05; steps before 3 ran with the earlier values (config.json and results.json "
        "record it under 'changed_on_resume')."
    ]


# --- data (item 4) ---


def write_npz(path, *, images=None, names=(b"t0", b"t1")):
    rng = np.random.default_rng(0)
    if images is None:
        images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.stack([np.arange(40) % 2, (np.arange(40) // 2) % 2], 1)
    np.savez(path, images=images, labels=labels, task_names=np.array(names))
    return str(path)


def npz_config(path):
    config = tiny()
    config.dataset.name, config.dataset.path = "npz", path
    return config


def test_byte_string_task_names_are_decoded_end_to_end(tmp_path):
    results = train.train_and_evaluate(
        npz_config(write_npz(tmp_path / "bytes.npz")), str(tmp_path / "run")
    )
    assert results["tasks"] == ["t0", "t1"] and results["groups"] == [["t0", "t1"]]
    assert "b'" not in (tmp_path / "run" / "results.json").read_text()


NPZ_CASES = [
    (
        "non-square images",
        dict(images=np.zeros((40, 8, 10, 3), np.uint8)),
        r"images must be square \(H = W\), got 8x10 \(shape \(40, 8, 10, 3\)\)",
    ),
    (
        "float images far outside [0, 1] and [0, 255]",
        dict(images=np.full((40, 8, 8, 3), -300.0, np.float32)),
        r"images are floats in \[-300, -300\], outside the documented ranges",
    ),
    (
        "integer images beyond 255",
        dict(images=np.full((40, 8, 8, 3), 1000, np.int32)),
        r"images are integers in \[1000, 1000\]; pixel values must be in \[0, 255\]",
    ),
    (
        "task names that are not UTF-8",
        dict(names=(b"t0", b"\xff")),
        r"task_names holds bytes that are not UTF-8 text",
    ),
]


@pytest.mark.parametrize("arrays, match", [c[1:] for c in NPZ_CASES], ids=[c[0] for c in NPZ_CASES])
def test_bad_npz_file(workdir, tmp_path, arrays, match):
    assert_refused(npz_config(write_npz(tmp_path / "bad.npz", **arrays)), workdir, match)


# --- damaged run files (item 3) ---


def damage_checksums(workdir):
    (workdir / "checkpoints" / "3" / "checksums.json").write_text("[1, 2]")


def empty_meta(workdir):
    folder = workdir / "checkpoints" / "3"
    (folder / "meta" / "metadata").write_text("{}")
    sums = checkpointing.file_checksums(str(folder))  # consistent: another version's checkpoint
    (folder / "checksums.json").write_text(json.dumps(sums))


DAMAGED_FILES = [
    (
        "checksums.json holding [1, 2]",
        damage_checksums,
        r"checkpoints/3 is damaged \(checksums.json is not an object of file names and sha256",
    ),
    (
        "checkpoint meta {}",
        empty_meta,
        r"checkpoints/3 is damaged \(its loop record \(meta\) is not one this version writes: "
        r"missing 'epoch'\)",
    ),
    (
        "config.json holding a list",
        lambda w: (w / "config.json").write_text("[1, 2]"),
        r"config.json is not a run's config \(a JSON list, not an object\); re-run with --restart",
    ),
    (
        "config.json truncated",
        lambda w: (w / "config.json").write_text('{"method": "mt'),
        r"config.json is unreadable \(Unterminated string",
    ),
    (
        "the manifest holding a list",
        lambda w: (w / ".tag_jax_manifest.json").write_text("[1, 2]"),
        r"\.tag_jax_manifest\.json is damaged \(not a manifest of this version\)",
    ),
    (
        "a damaged record of changed settings",
        lambda w: (w / "config.json").write_text(
            json.dumps({**json.loads((w / "config.json").read_text()), "changed_on_resume": 3})
        ),
        r"config.json holds a damaged 'changed_on_resume' record",
    ),
]


@pytest.mark.parametrize(
    "damage, match", [c[1:] for c in DAMAGED_FILES], ids=[c[0] for c in DAMAGED_FILES]
)
def test_a_damaged_run_file_is_one_line_and_changes_nothing(workdir, damage, match):
    damage(workdir)
    config = tiny()
    config.num_epochs = 2
    assert_refused(config, workdir, match)


# --- memory, checked before the workdir exists (item 3) ---


@pytest.mark.parametrize(
    "config_file, setting, lower",
    [
        ("configs/synthetic_tag.py", "--config.image_size=4096", "config.image_size"),
        ("configs/tiny_test.py", "--config.batch_size=1000000000", "config.batch_size"),
    ],
)
def test_a_config_the_memory_cannot_hold_is_refused_before_the_workdir_exists(
    tmp_path, config_file, setting, lower
):
    proc, _ = run_cli(
        f"--config={config_file}", f"--workdir={tmp_path / 'run'}", "--config.mesh.data=1", setting
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc)
    assert re.fullmatch(
        r"error: this run needs at least [\d,.]+ GiB of host memory, [\d,.]+ [GM]iB free \(the "
        rf"largest need: .*\); lower {re.escape(lower)}.*",
        line,
    ), line
    assert not (tmp_path / "run").exists()


# --- divergence (item 6) ---


def test_a_real_blowup_still_ends_with_status_3(tmp_path):
    proc, _ = run_cli(
        *TINY, f"--workdir={tmp_path / 'run'}", "--config.optimizer.learning_rate=1e8"
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert error_lines(proc)[-1].startswith("error: ") and "non-finite" in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_the_quick_start_verdict_does_not_depend_on_the_logging_frequency(tmp_path):
    """The quick start with the transient loss spike at step 2 that logging every step once
    called a divergence: the first 40 steps train on at either frequency."""
    for every in (1, 100):
        proc, _ = run_cli(
            "--config=configs/synthetic_tag.py",
            f"--workdir={tmp_path / str(every)}",
            f"--config.log_every_steps={every}",
            "--config.max_steps=40",
            timeout=900,
        )
        assert proc.returncode == 0, (every, proc.stderr[-2000:])
        assert "Stopped at config.max_steps=40" in proc.stderr


# --- SIGTERM (item 7) ---


def terminate_when(proc, stderr_path, ready, timeout=240):
    """Sends SIGTERM once ready() holds; (return code, stderr text)."""
    try:
        assert wait_for(ready, timeout), stderr_path.read_text()[-2000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, stderr_path.read_text()


TERMINATED = re.compile(
    r"error: terminated \(SIGTERM\): saved a checkpoint at step (\d+); re-run the same command "
    r"to resume from it"
)


def test_sigterm_checkpoints_exits_143_and_the_rerun_resumes_there(tmp_path):
    run = tmp_path / "run"
    args = (*TINY, f"--workdir={run}", "--config.num_epochs=1000", "--config.log_every_steps=1")
    err = tmp_path / "stderr"
    with open(err, "w") as stderr:
        proc = start_cli(*args, "--config.early_stopping.patience=0", stderr=stderr)
        code, text = terminate_when(proc, err, lambda: (run / "metrics.jsonl").exists())
    assert code == 143, text[-2000:]
    last = text.strip().splitlines()[-1]
    step = int(TERMINATED.fullmatch(last).group(1))
    assert (run / "checkpoints" / str(step)).is_dir()
    resumed, _ = run_cli(
        *args, "--config.early_stopping.patience=0", f"--config.max_steps={step + 1}"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resumed from step {step} " in resumed.stderr


@pytest.mark.slow
def test_a_study_stopped_by_sigterm_resumes_the_same_stage(tmp_path):
    study = tmp_path / "study"
    args = (
        "--config=configs/tiny_study.py",
        f"--workdir={study}",
        "--config.study.methods=('mtl',)",
        "--config.study.epochs_train=1000",
        "--config.early_stopping.patience=0",
        "--config.log_every_steps=1",
    )
    err = tmp_path / "stderr"
    with open(err, "w") as stderr:
        proc = start_cli(*args, stderr=stderr, module="tag_jax.study")
        code, text = terminate_when(proc, err, lambda: (study / "mtl" / "metrics.jsonl").exists())
    assert code == 143, text[-2000:]
    step = int(TERMINATED.fullmatch(text.strip().splitlines()[-1]).group(1))
    resumed, _ = run_cli(*args, f"--config.max_steps={step + 1}", module="tag_jax.study")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resumed from step {step} " in resumed.stderr


# --- a study re-run with changed settings (item 2) ---


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A finished one-stage ('mtl') tiny study."""
    workdir = tmp_path_factory.mktemp("study_template") / "study"
    config = load_config("tiny_study")
    config.study.methods = ("mtl",)
    run_study(config, str(workdir))
    return workdir


@pytest.fixture
def study(finished_study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(finished_study, copy)
    return copy


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("dataset.noise", 2.0, "dataset.noise=0.5, this study asks 2.0"),
        ("optimizer.learning_rate", 0.05, "optimizer.learning_rate=0.1, this study asks 0.05"),
        ("seed", 3, "seed=0, this study asks 3"),
    ],
)
def test_a_study_rerun_with_changed_settings_is_refused_naming_the_key(study, key, value, shown):
    config = load_config("tiny_study")
    config.study.methods = ("mtl",)
    config.update_from_flattened_dict({key: value})
    before = snapshot(study)
    with pytest.raises(UserError) as info:
        run_study(config, str(study))
    assert str(info.value) == (
        f"study stage mtl ({study}/mtl) finished with {shown}: its results would be reported for "
        "settings they were not made with; use a new --workdir, or re-run with --restart to run "
        "every stage again"
    )
    assert snapshot(study) == before


def test_a_study_rerun_with_another_seed_exits_2_in_one_line(study):
    before = snapshot(study)
    proc, _ = run_cli(
        "--config=configs/tiny_study.py",
        f"--workdir={study}",
        "--config.study.methods=('mtl',)",
        "--config.seed=3",
        module="tag_jax.study",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc)[-1].startswith(
        f"error: study stage mtl ({study}/mtl) finished with seed=0, this study asks 3: "
    )
    assert snapshot(study) == before


def test_a_study_whose_grouping_stage_has_one_task_is_refused_before_any_stage(tmp_path):
    config = load_config("tiny_study")
    config.study.methods = ("mtl", "tag")
    config.tasks = ("g0_t0",)
    with pytest.raises(UserError, match=r"config.method='tag' groups tasks and needs at least 2"):
        run_study(config, str(tmp_path / "study"))
    assert not (tmp_path / "study").exists()


def test_a_damaged_stage_results_json_is_one_line(study):
    (study / "mtl" / "results.json").write_text("[1, 2]")
    config = load_config("tiny_study")
    config.study.methods = ("mtl",)
    before = snapshot(study)
    with pytest.raises(UserError) as info:
        run_study(config, str(study))
    assert str(info.value) == (
        f"{study}/mtl/results.json is damaged (a JSON list, not an object); delete its stage "
        f"folder {study}/mtl to train that stage again, or re-run with --restart"
    )
    assert snapshot(study) == before
