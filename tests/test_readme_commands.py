"""Every command in the READMEs' fenced shell blocks runs, in order, on tiny settings."""

import os
import re
import shlex
import subprocess
import sys

import numpy as np
from conftest import REPO

from tag_jax.data import synthetic

# Appended to every training command: the synthetic data and trunk shrunk to seconds.
TINY = [
    "--config.num_epochs=1",
    "--config.dataset.num_train=96",
    "--config.dataset.num_validation=32",
    "--config.dataset.num_test=32",
    "--config.image_size=8",
    "--config.model.width=4",
    "--config.batch_size=32",
    "--config.eval_batch_size=32",
    "--config.mesh.data=1",
    "--config.selection.time_limit=20",
    "--config.affinity.every_n_steps=1",  # a few steps: TAG and CS measure every one
    "--config.min_train_steps=0",
    "--config.early_stopping.min_steps=0",
]  # npz recipes
TINY_STUDY = [
    "--config.study.methods=('mtl', 'tag')",
    "--config.study.max_groups=(2,)",
    "--config.study.seeds=1",
]
# Commands run elsewhere: the environment and the install (.ci/run does the same), the test
# suite itself, and the benchmarks (minutes each, run by hand; the README quotes their numbers).
NOT_HERE = (
    "python3 -m venv",
    ". .venv/bin/activate",
    "pip install",
    "python -m pytest",
    "python benchmarks/",
)


def fenced_commands(path: str) -> list[str]:
    """The commands of every ```bash block, `&&`-chains split, comments dropped."""
    text = open(path).read()
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def runnable(command: str) -> list[str]:
    """The command's argv on tiny settings."""
    argv = shlex.split(command)
    if argv[:3] == ["python", "-m", "tag_jax.main"]:
        argv += TINY
    elif argv[:3] == ["python", "-m", "tag_jax.study"]:
        argv += TINY + TINY_STUDY
    elif argv[:3] == ["python", "-m", "selection"]:
        argv += ["--time-limit", "20"]
    else:
        raise AssertionError(f"no tiny form for README command {command!r}: add one here")
    return [sys.executable] + argv[1:]


def all_commands():
    return [
        c
        for name in ("README.md", os.path.join("colab", "README.md"))
        for c in fenced_commands(os.path.join(REPO, name))
    ]


def test_the_readme_has_its_two_setup_commands_first():
    commands = all_commands()
    venv = ["python3 -m venv .venv", ". .venv/bin/activate"]
    assert commands[:8] == venv + [
        "pip install -e .",
        "python -m tag_jax.main --config=configs/synthetic_tag.py --workdir=runs/quickstart",
    ] + venv + ["pip install -e '.[test]'", "python -m pytest -q"]


def write_my_npz(path):
    """The `my.npz` the README's own-data commands read: 160 synthetic 8x8 examples, 4 tasks."""
    images, labels = synthetic.generate(
        160,
        image_size=8,
        group_sizes=(2, 2),
        noise=0.5,
        task_noise=0.05,
        label_noise=0.0,
        seed=0,
        split="train",
    )
    np.savez(path, images=images, labels=labels, task_names=np.array(["a", "b", "c", "d"]))


def test_every_readme_command_runs_in_order(tmp_path):
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    os.symlink(os.path.join(REPO, "docs"), tmp_path / "docs")
    write_my_npz(tmp_path / "my.npz")
    env = {**os.environ, "PYTHONPATH": REPO}
    ran = 0
    for command in all_commands():
        if command.startswith(NOT_HERE):
            continue
        proc = subprocess.run(
            runnable(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, command
        ran += 1
    assert ran >= 6
    assert (tmp_path / "runs" / "quickstart" / "groups.json").exists()
    assert (tmp_path / "runs" / "study" / "report.md").exists()
