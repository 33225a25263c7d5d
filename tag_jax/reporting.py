"""Atomic JSON outputs and metrics.jsonl upkeep (light: no TensorFlow, no clu)."""

import json
import os
import tempfile

import jax
import numpy as np


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to a temporary file in the same folder, then renames it: never half-written."""
  folder = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
    json.dump(obj, f, indent=1, default=_to_builtin)
  os.replace(f.name, path)


def _to_builtin(value):
  if isinstance(value, (np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drops records logged after `last_step` (they are re-logged when a resumed run redoes them)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
  with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False) as f:
    f.writelines(kept)
  os.replace(f.name, path)
