"""The file where tag_jax.autotune keeps its decisions, and the key each decision is stored under.

One JSON file (`cache_path()`): {'version': CACHE_VERSION, 'decisions': {key: decision}}. A key
is the canonical JSON of everything a decision depends on: the setting and its candidates, the
backend, device kind (and the CPU model on CPU), jax version, and the shapes and config values
that shape the timed step.
"""

import json
import os
from typing import Optional, Sequence

import jax
from absl import logging

from tag_jax import reporting

CACHE_DIR_ENV = "TAG_JAX_CACHE_DIR"
CACHE_FILE = "autotune.json"
CACHE_VERSION = 2  # 2: model.conv decided on the run's mix of steps (was the dominant one)


def cache_path() -> str:
    """$TAG_JAX_CACHE_DIR/autotune.json, else ~/.cache/tag_jax/autotune.json."""
    folder = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "tag_jax"
    )
    return os.path.join(folder, CACHE_FILE)


def load_cache(path: Optional[str] = None) -> dict:
    """{key: decision} of the cache file; {} when there is none, or (with a warning) when it is
    unreadable or not a cache of this version (it is rewritten on the next store)."""
    path = path or cache_path()
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            content = json.load(f)
        if content.get("version") != CACHE_VERSION or not isinstance(
            content.get("decisions"), dict
        ):
            raise ValueError(f"not a version-{CACHE_VERSION} autotune cache")
        return content["decisions"]
    except (OSError, ValueError, AttributeError) as e:
        logging.warning("Ignoring the autotune cache %s (%s); it will be rewritten.", path, e)
        return {}


def store(key: str, decision: dict, path: Optional[str] = None) -> None:
    """Adds one decision to the cache file (re-read first, so concurrent runs lose nothing but a
    race), written atomically. A cache that cannot be written is a warning, not an error."""
    path = path or cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        decisions = {**load_cache(path), key: decision}
        reporting.write_json_atomic(path, {"version": CACHE_VERSION, "decisions": decisions})
    except OSError as e:
        logging.warning("Could not write the autotune cache %s: %s", path, e)


def host_description() -> str:
    """The CPU model and core count: CPU backends of one device kind differ by machine."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return f"{model or 'unknown cpu'} x{os.cpu_count()}"


def machine_fields() -> dict:
    """The fields of every key that name this machine: backend, device kind, jax version, and on
    CPU the host (its model and core count)."""
    device = jax.devices()[0]
    fields = {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "jax": jax.__version__,
    }
    if device.platform == "cpu":
        fields["host"] = host_description()
    return fields


def cache_key(
    config,
    setting: str,
    num_tasks: int,
    image_shape,
    batch_size: int,
    candidates: Sequence[str],
    depends_on: dict,
) -> str:
    """Canonical JSON of everything the decision of `setting` depends on, the candidates timed
    included; depends_on: {config path: value} of the other config values that shape the timed
    step (the setting's key paths, and for a 'mix' decision the later settings')."""
    fields = {
        "setting": setting,
        "candidates": list(candidates),
        **machine_fields(),
        "method": config.method,
        "tasks": num_tasks,
        "image_shape": list(image_shape),
        "batch": batch_size,
        "dtype": config.dtype,
        "width": config.model.width,
        "num_classes": config.model.num_classes,
        "optimizer": config.optimizer.name,
    }
    if setting != "model.conv":
        fields["conv"] = config.model.conv
    for path, value in depends_on.items():
        fields[path] = list(value) if isinstance(value, tuple) else value
    return json.dumps(fields, sort_keys=True)
