"""Helpers shared by test modules: small affinity problems (an MLP, the trunk), folder snapshots
and the command lines as real processes."""

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from conftest import REPO, load_config

from tag_jax import models


def mlp_problem(num_tasks=4):
    """(losses_fn(params, batch) -> (T,), params, batch, a momentum trace like params) of a
    two-layer tanh MLP with fixed linear heads and squared-error losses; 16 examples."""
    keys = jax.random.split(jax.random.key(0), 6)
    params = {
        "w1": jax.random.normal(keys[0], (5, 8)) * 0.5,
        "b1": jnp.zeros(8),
        "w2": jax.random.normal(keys[1], (8, 6)) * 0.4,
    }
    heads = jax.random.normal(keys[2], (num_tasks, 6))
    batch = {
        "x": jax.random.normal(keys[3], (16, 5)),
        "y": jax.random.normal(keys[4], (16, num_tasks)),
    }

    def losses_fn(p, batch):
        features = jnp.tanh(batch["x"] @ p["w1"] + p["b1"]) @ p["w2"]
        return ((features @ heads.T - batch["y"]) ** 2).mean(0)

    trace = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params)
    return losses_fn, params, batch, trace


def trunk_problem(num_tasks=3):
    """(model, variables, batch) of a width-4 MultiTaskNet on 6 random 8x8 images, the last one
    masked out."""
    model = models.MultiTaskNet(num_tasks=num_tasks, width=4, conv="im2col")
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(6, 8, 8, 3)), jnp.float32),
        "labels": jnp.asarray(rng.integers(0, 2, (6, num_tasks)), jnp.int32),
        "mask": jnp.array([1, 1, 1, 1, 1, 0], jnp.float32),
    }
    variables = model.init(jax.random.key(1), batch["image"], train=False)
    return model, variables, batch


def snapshot(folder) -> dict:
    """{relative path: (mode, bytes)} of every file under folder ({} if there is none)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = (os.stat(path).st_mode, f.read())
    return files


def run_cli(*args, module="tag_jax.main", timeout=300):
    """(CompletedProcess, seconds) of `python -m module args...` from the repository root."""
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.time() - start


def error_lines(proc) -> list:
    """The non-empty lines a process wrote on stderr."""
    return [line for line in proc.stderr.strip().splitlines() if line.strip()]


def start_cli(*args, stderr, module="tag_jax.main") -> subprocess.Popen:
    """`python -m module args...` started in the background, stderr to the open file `stderr`."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=REPO, stderr=stderr, text=True
    )


def wait_for(predicate, timeout: float, every: float = 0.2) -> bool:
    """True once predicate() is true, False after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


# Compiling the tiny runs costs far more than running them: these flags cut XLA:CPU compile time
# by about 40% (the compiled code is slower, which does not matter here).
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
)


def one_device_fast_compile_flags() -> str:
    """XLA_FLAGS for the commands: conftest's 8 simulated devices dropped (they run on one),
    FAST_COMPILE_FLAGS added."""
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    return " ".join(flags + list(FAST_COMPILE_FLAGS))


def tiny():
    """configs/tiny_test.py on one device, one epoch (3 steps)."""
    config = load_config("tiny_test")
    config.mesh.data = 1
    config.num_epochs = 1
    return config


# Files of the user's own that a run's folder may hold, and must keep.
USER_FILES = ("package.json", "my_labels.json", "figure1.png", "checkpoints/my_model.pt")


def make_files(folder, names) -> None:
    """Writes a small text file at each relative path of `names` under folder."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"the user's {name}")
