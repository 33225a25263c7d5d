"""The console of a run: progress and epoch lines, and a quick start that stays short."""

import json
import logging as py_logging
import os
import re
import subprocess
import sys

import pytest
from absl import logging

from tag_jax import cli, console, reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RecordingWriter:
    def __init__(self):
        self.records = []

    def write_scalars(self, step, scalars):
        self.records.append((step, dict(scalars)))


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize(
    "seconds,text",
    [
        (0, "0s"),
        (44.6, "45s"),
        (60, "1m 00s"),
        (725, "12m 05s"),
        (3600, "1h 00m"),
        (11220, "3h 07m"),
    ],
)
def test_duration(seconds, text):
    assert console.duration(seconds) == text


def test_progress_line_fraction_rate_and_time_left():
    # 680 steps left at 20 steps/s: 34 s.
    assert console.progress_line(120, 800, 20.0) == (
        "step 120/800 (15%), 20.0 steps/s, about 34s of training left"
    )


def test_epoch_line_best_so_far_is_the_lowest_total_error_and_its_epoch():
    history = [
        {"epoch": 1, "val_total_error": 50.0},
        {"epoch": 2, "val_total_error": 44.1},
        {"epoch": 3, "val_total_error": 44.1},  # a tie keeps the earlier epoch
    ]
    assert console.epoch_line(4, 8, 1.23456, 45.678, history) == (
        "epoch 4/8: train loss 1.235, validation Total Error 45.68 (best 44.10, epoch 2)"
    )
    assert console.epoch_line(5, 8, None, 40.0, history) == (
        "epoch 5/8: validation Total Error 40.00 (best 40.00, epoch 5)"
    )


def test_console_log_format_is_the_time_and_the_message():
    formatter = cli.ConsoleFormatter()

    def formatted(level, message):
        record = py_logging.LogRecord("absl", level, "/x/train.py", 1, message, (), None)
        clock, _, text = formatter.format(record).partition(" ")
        assert re.fullmatch(r"\d\d:\d\d:\d\d", clock)
        return text

    assert formatted(py_logging.INFO, "epoch 1/8: ...") == "epoch 1/8: ..."
    assert formatted(py_logging.WARNING, "the budget ran out") == "WARNING: the budget ran out"
    assert formatted(py_logging.WARNING, "WARNING: the run did not learn") == (
        "WARNING: the run did not learn"
    )


def test_progress_writes_rates_every_n_steps_and_a_line_at_most_every_interval(monkeypatch):
    lines = []
    monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
    clock, writer = FakeClock(), RecordingWriter()
    progress = console.Progress(
        total_steps=200, writer=writer, every_steps=10, every_seconds=30.0, clock=clock
    )
    clock.now = 105.0
    progress(40)  # a resumed run: the first call starts the clock only
    for step in range(41, 131):
        clock.now += 1.0 if step <= 70 else 0.5  # 1 step/s, then 2 steps/s
        progress(step)

    # steps_per_sec over each 10 steps, uptime since creation (t = 100)
    rates = [(step, r["steps_per_sec"], r["uptime"]) for step, r in writer.records]
    assert rates == [(50, 1.0, 15.0), (60, 1.0, 25.0), (70, 1.0, 35.0)] + [
        (step, 2.0, 40.0 + (step - 80) / 2) for step in range(80, 131, 10)
    ]
    # A line once 30 s passed since the last (or the first call), at the rate since then.
    assert lines == [
        "step 70/200 (35%), 1.0 steps/s, about 2m 10s of training left",
        "step 130/200 (65%), 2.0 steps/s, about 35s of training left",
    ]


def run_quick_start(cwd, *overrides, environment=None):
    """The README's quick start command (configs/synthetic_tag.py, --workdir=runs/quickstart),
    run in `cwd`; returns the finished process, its stdout and stderr together in `.stdout`."""
    command = [
        sys.executable,
        "-m",
        "tag_jax.main",
        f"--config={os.path.join(REPO, 'configs', 'synthetic_tag.py')}",
        "--workdir=runs/quickstart",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": REPO, **(environment or {})}
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
    )


def check_console(proc, workdir):
    """At most 40 lines, none over 200 characters, one per epoch trained, no metric dumps, the
    answer last."""
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert max(map(len, lines)) <= 200, max(lines, key=len)
    with open(os.path.join(workdir, "results.json")) as f:
        trained = json.load(f)["epochs"]
    with open(os.path.join(workdir, "config.json")) as f:
        planned = json.load(f)["num_epochs"]
    messages = [line.partition(" ")[2] for line in lines]  # after the time, '20:33:56 '
    for epoch in range(1, planned + 1):
        count = sum(m.startswith(f"epoch {epoch}/{planned}: train loss ") for m in messages)
        assert count == (epoch <= trained), (epoch, lines)
    assert not any("train/loss" in line or "affinity/" in line for line in lines)
    assert "Compiling the tag measured step" in proc.stdout
    answer = lines[lines.index("") + 1 :]  # after the empty line the answer starts with
    assert answer[0].startswith("tag: test Total Error"), answer
    files = [line.startswith("results in runs/quickstart: ") for line in answer].index(True)
    assert all(line.startswith("  ") for line in answer[files + 1 :]), answer  # its wrapped rest


def test_quick_start_console_shortened_run(tmp_path):
    """The quick start on less and smaller data (the same code paths; 'auto' by its rules)."""
    proc = run_quick_start(
        tmp_path,
        "--config.dataset.num_train=256",
        "--config.dataset.num_validation=64",
        "--config.dataset.num_test=64",
        "--config.image_size=8",
        "--config.model.width=4",
        "--config.num_epochs=3",
    )
    check_console(proc, tmp_path / "runs" / "quickstart")


@pytest.mark.slow
def test_quick_start_console_as_a_new_user_sees_it(tmp_path):
    """The quick start exactly, with 'auto' timed into an empty autotune cache (its notices
    included)."""
    environment = {"TAG_JAX_AUTOTUNE": "time", "TAG_JAX_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_quick_start(tmp_path, environment=environment)
    check_console(proc, tmp_path / "runs" / "quickstart")
    assert "autotune model.conv" in proc.stdout


def test_epoch_train_loss_is_the_mean_summed_loss_of_the_steps_checked():
    import jax.numpy as jnp

    from tag_jax import divergence

    monitor = divergence.LossMonitor(("a", "b"), "unused")
    assert monitor.mean_loss() is None
    losses = {1: [0.5, 1.5], 2: [1.0, 1.0], 3: [0.25, 0.75]}  # sums 2.0, 2.0, 1.0
    for step, task_losses in losses.items():
        monitor.add(step, jnp.asarray(task_losses))
        if step == 2:
            monitor.check(up_to=2)  # e.g. at a log step; the rest at the epoch's end
    monitor.check()
    assert monitor.mean_loss() == pytest.approx(5.0 / 3)


def test_answer_wraps_the_warning_and_the_files_into_short_lines(tmp_path):
    workdir = tmp_path / ("a_long_folder_name_" * 3)
    workdir.mkdir()
    for name in ("results.json", "config.json", "groups.json", "groups.png", "affinity.png"):
        (workdir / name).write_text("")
    summary = {"total_error": 210.0}
    results = {
        "method": "mtl",
        "tasks": ["a", "b"],
        "epochs": 1,
        "restored_epoch": None,
        "learned": False,
        "test": summary,
        "validation": summary,
        "majority_baseline": {"test": summary, "validation": {"total_error": 209.0}},
        "groups": [["a", "b"]],
    }
    lines = reporting.answer_lines(results, str(workdir))
    assert max(map(len, lines)) <= 200
    warning = [line.startswith("WARNING: the run did not learn") for line in lines].index(True)
    files = [line.startswith(f"results in {workdir}: ") for line in lines].index(True)
    for start, end in ((warning, files), (files, len(lines))):  # each wrapped, nothing between
        assert all(line.startswith("  ") for line in lines[start + 1 : end])
    # At most WRAP_WIDTH characters, but for the first files line: the folder name stays whole.
    short = lines[warning:files] + lines[files + 1 :]
    assert all(len(line) <= reporting.WRAP_WIDTH for line in short)
    written = " ".join(line.strip() for line in lines[files:])
    assert "affinity.png, config.json, groups.json, groups.png, results.json (and" in written
