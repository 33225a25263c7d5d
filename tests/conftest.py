"""Shared test set-up: 8 simulated CPU devices, configs loaded from configs/ by path, fixtures.

Tests see 8 devices so that sharding is tested for real; the tiny config runs on
one of them (a run split 8 ways on 2 cores is slow) unless a test sets
config.mesh.data itself.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# 'auto' settings by their fixed rules, not timed (tag_jax.autotune; its own tests time), and
# no test writes the user's cache.
os.environ.setdefault("TAG_JAX_AUTOTUNE", "rule")
os.environ["TAG_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="tag_jax_test_cache_")
atexit.register(shutil.rmtree, os.environ["TAG_JAX_CACHE_DIR"], True)

import jax  # noqa: E402 (after the XLA flags above)
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
    """get_config() of configs/<name>.py."""
    path = os.path.join(REPO, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def tiny_config():
    config = load_config("tiny_test")
    config.mesh.data = 1
    return config


@pytest.fixture
def highest_precision():
    """float32 matmuls at full precision (no TF32 / bfloat16 passes on accelerators) for the tests
    that compare against a reference computed another way; scoped to the test, not the session."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch tiny 'mtl' run (3 steps, a checkpoint at step 3): the workdir the
    bad-input tests copy and damage."""
    from helpers import tiny  # here: helpers imports this module

    from tag_jax import train

    workdir = tmp_path_factory.mktemp("template") / "run"
    train.train_and_evaluate(tiny(), str(workdir))
    return workdir


@pytest.fixture
def workdir(finished_run, tmp_path):
    """A copy of finished_run a test may change."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy
