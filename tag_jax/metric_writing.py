"""Metric writers without TensorFlow: TensorBoard event files, metrics.jsonl and (--verbosity=1)
the log.

Each writer has the methods of clu's `MetricWriter` that tag_jax calls: `write_scalars(step,
{name: value})`, `write_images(step, {name: (N, H, W, C) array})`, `flush()` and `close()` (clu's
own writers are not used: importing them imports TensorFlow). The event files are TensorBoard's
format, written with the `tensorboard` package's record framing and protocol buffers: a scalar is
a `simple_value`, an image a PNG, as TensorBoard and its `EventAccumulator` read them.
"""

import io
import itertools
import json
import os
import socket
import time
from typing import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

_FILE_NUMBERS = itertools.count()  # two writers of one process never share a file name


def png(image: np.ndarray) -> summary_pb2.Summary.Image:
    """An (H, W, C) image, C in {1, 3, 4}, uint8 or floats in [0, 1], as a PNG summary image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(255 * np.clip(image, 0.0, 1.0)).astype(np.uint8)
    height, width, channels = image.shape
    encoded = io.BytesIO()
    Image.fromarray(image[..., 0] if channels == 1 else image).save(encoded, format="PNG")
    return summary_pb2.Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=encoded.getvalue()
    )


class EventFileWriter:
    """Writes to a new TensorBoard event file in `folder`, events.out.tfevents.<time>.<host>...;
    each write is one event of that step, buffered until `flush`."""

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_FILE_NUMBERS)}"
        )
        self._records = RecordWriter(open(os.path.join(folder, name), "wb"))
        self._write(event_pb2.Event(file_version="brain.Event:2"))

    def _write(self, event: event_pb2.Event) -> None:
        event.wall_time = time.time()
        self._records.write(event.SerializeToString())

    def _write_values(self, step: int, values: Sequence[summary_pb2.Summary.Value]) -> None:
        self._write(event_pb2.Event(step=int(step), summary=summary_pb2.Summary(value=values)))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._write_values(
            step,
            [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()],
        )

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Each (N, H, W, C) batch as N PNGs, tagged `name` (N = 1) or `name/image/<i>`."""
        values = []
        for name, batch in images.items():
            for i, image in enumerate(batch):
                tag = name if len(batch) == 1 else f"{name}/image/{i}"
                values.append(summary_pb2.Summary.Value(tag=tag, image=png(image)))
        self._write_values(step, values)

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


class JsonlWriter:
    """Appends one JSON object, {"step": step, name: value, ...}, per `write_scalars` call to a
    file, at once (a checkpoint counts its records); images are not written."""

    def __init__(self, path: str):
        self._path = path

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class LogWriter:
    """Every scalar to the log, `[step] name = value, ...` (long lines: --verbosity=1 only), and
    each image's shape."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        text = ", ".join(f"{k} = {float(v):.6g}" for k, v in scalars.items())
        logging.info("[%d] %s", step, text)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        text = ", ".join(f"{k} image {np.shape(v)}" for k, v in images.items())
        logging.info("[%d] %s", step, text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiWriter:
    """Writes to each of `writers` in turn."""

    def __init__(self, writers: Sequence):
        self._writers = tuple(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for writer in self._writers:
            writer.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for writer in self._writers:
            writer.write_images(step, images)

    def flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


def create_writer(workdir: str) -> MultiWriter:
    """Process 0: the TensorBoard event file and metrics.jsonl in `workdir`; every process: the log,
    when --verbosity is 1 or more."""
    writers = [LogWriter()] if logging.vlog_is_on(1) else []
    if jax.process_index() == 0:
        writers += [EventFileWriter(workdir), JsonlWriter(os.path.join(workdir, "metrics.jsonl"))]
    return MultiWriter(writers)
