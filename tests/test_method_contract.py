"""The loop/method contract: methods stay inside it, and a new method is one module + one line."""

import importlib.util
import json
import os
import re
import types

import numpy as np
import pytest
from conftest import REPO, load_config

from tag_jax import methods, run_checks, train
from tag_jax.errors import UserError
from tag_jax.methods import base


def method_sources():
    folder = os.path.join(REPO, "tag_jax", "methods")
    return {
        name: open(os.path.join(folder, name)).read()
        for name in sorted(os.listdir(folder))
        if name.endswith(".py")
    }


def test_methods_do_not_reach_into_the_loop_or_the_data():
    imports = re.compile(
        r"^\s*(from tag_jax import .*\b(train|data)\b|(from|import) tag_jax\.(train|data))", re.M
    )
    for name, source in method_sources().items():
        assert "from tag_jax import train" not in source and "tag_jax.data" not in source, name
        assert not imports.search(source), name


def test_no_method_name_comparison_outside_the_registry():
    for folder in ("tag_jax", "tag_jax/methods"):
        for name in os.listdir(os.path.join(REPO, folder)):
            if name.endswith(".py") and (folder, name) != ("tag_jax/methods", "__init__.py"):
                source = open(os.path.join(REPO, folder, name)).read()
                assert not re.search(r"config\.method\s*(==|!=|in\b)", source), f"{folder}/{name}"


def register_the_example(tmp_path, monkeypatch):
    """Imports the example of docs/adding_a_method.md from its code block and registers it with
    the doc's registry line; returns the module."""
    doc = open(os.path.join(REPO, "docs", "adding_a_method.md")).read()
    code = re.search(r"```python\n(\"\"\"'weighted'.*?)```", doc, re.S).group(1)
    assert len(code.splitlines()) <= 52
    path = tmp_path / "weighted.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("weighted_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    line = re.search(r"```python\n( +\"weighted\": Registered\(.*\),)\n```", doc).group(1)
    entry = eval(f"{{{line}}}", {"Registered": methods.Registered, "weighted": module})
    for name, registered in entry.items():
        monkeypatch.setitem(methods.REGISTRY, name, registered)
    return module


def example_config():
    """The tiny config made after the example is registered (so it holds config.weighted)."""
    config = load_config("tiny_test")
    config.mesh.data = 1
    config.method = "weighted"
    return config


def test_the_documented_example_method_builds_and_trains(tmp_path, monkeypatch):
    register_the_example(tmp_path, monkeypatch)
    config = example_config()
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(config, workdir)
    assert results["steps"] == 6 and results["compute"]["trunk_passes"] == 6
    assert results["groups"] == [list(results["tasks"])]
    weights = json.load(open(os.path.join(workdir, "weights.json")))
    np.testing.assert_allclose(list(weights.values()), [1.0, 1.25, 1.5, 1.75])
    assert results["outputs"] == {"weights": [1.0, 1.25, 1.5, 1.75]}
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    logged = [r for r in records if "train/loss" in r]
    assert logged and all(
        r["train/loss"] > sum(r[f"train/loss/{t}"] for t in results["tasks"]) for r in logged
    )  # weights >= 1, some > 1


def test_the_documented_example_setting_is_checked_and_read(tmp_path, monkeypatch):
    register_the_example(tmp_path, monkeypatch)
    config = example_config()
    assert config.weighted.growth == 1.0
    for bad in (-1.0, 10.5, float("nan")):
        config.weighted.growth = bad
        with pytest.raises(UserError, match=r"^config.weighted.growth must be in \[0, 10\]"):
            run_checks.validate_config(config)
    config.weighted.growth = 2.0
    run_checks.validate_config(config)
    tasks = ("a", "b", "c", "d")
    method = methods.build(config, tasks, (8, 8, 3), steps_per_epoch=3)
    ctx = types.SimpleNamespace(workdir=str(tmp_path), task_names=tasks)
    expected = [1 + 2.0 * t / 4 for t in range(4)]
    np.testing.assert_allclose(method.finish(ctx, None, None, None)["weights"], expected)


def test_every_registered_method_declares_its_networks(tiny_config):
    for name in methods.METHODS:
        config = tiny_config.copy_and_resolve_references()
        config.method = name
        if name == "groups":
            config.groups.groups = (("g0_t0", "g0_t1"), ("g1_t0", "g1_t1"))
        method = methods.build(config, ("g0_t0", "g0_t1", "g1_t0", "g1_t1"), (8, 8, 3), 3)
        assert isinstance(method, base.Method)
        num_networks, num_tasks = method.members.shape
        assert num_tasks == 4 and method.serving.shape == (4,)
        assert all(method.members[g, t] for t, g in enumerate(method.serving)), name
        assert method.stacked == (num_networks > 1), name
