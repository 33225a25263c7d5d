"""A tiny grouping study for tests: every method on the tiny_test data and model, one epoch per
stage."""

import importlib.util
import os


def tiny_test_config():
    """get_config() of configs/tiny_test.py (configs/ is not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_test.py")
    spec = importlib.util.spec_from_file_location("configs_tiny_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = tiny_test_config()
    config.mesh.data = 1
    config.study.max_groups = (2,)
    config.study.epochs_search = 1
    config.study.epochs_train = 1
    return config
