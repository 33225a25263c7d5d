"""Metric writers: TensorBoard and the log through clu, plus metrics.jsonl (one JSON per line).

clu's writers import TensorFlow, so this module is imported only by the training loop.
"""

import json
import os
from typing import Mapping

import jax
from clu import metric_writers


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


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard + log writer (process 0; others only log), writing in a background thread so
    the training loop never waits on it (flush() waits for it), and metrics.jsonl, written at once
    (a checkpoint counts its records)."""
    if jax.process_index() > 0:
        return metric_writers.create_default_writer(just_logging=True)
    return metric_writers.MultiWriter(
        [
            metric_writers.create_default_writer(workdir, asynchronous=True),
            JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
        ]
    )
