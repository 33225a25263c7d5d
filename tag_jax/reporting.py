"""Metric writing (clu writers + metrics.jsonl) and atomic JSON outputs."""

import json
import os
import tempfile
from typing import Mapping

import jax
import numpy as np
from clu import metric_writers


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


class JsonlWriter(metric_writers.MetricWriter):
  """A clu MetricWriter appending one JSON object per `write_scalars` call to a file."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drops records logged after `last_step` (they are re-logged when a resumed run redoes them)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
  with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False) as f:
    f.writelines(kept)
  os.replace(f.name, path)


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard + log writer (process 0; others only log) and metrics.jsonl."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
  ])
