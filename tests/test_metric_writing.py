"""TensorBoard event files without TensorFlow, read back with TensorBoard's own reader;
metrics.jsonl; and no TensorFlow imported by the training code."""

import io
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from absl import logging
from PIL import Image

from tag_jax import metric_writing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def event_accumulator():
    """TensorBoard's EventAccumulator, reading through its TensorFlow-free stub as a core install
    does (tensorboard.compat.notf: the switch TensorBoard's own no-TensorFlow build sets)."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing import event_accumulator

    return event_accumulator


def read_events(event_accumulator, folder):
    accumulator = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    return accumulator.Reload()


def test_scalars_read_back_by_tensorboard_with_their_steps(tmp_path, event_accumulator):
    writer = metric_writing.EventFileWriter(str(tmp_path))
    written = {20: {"train/loss": 2.5, "lr": 0.1}, 40: {"train/loss": 1.25}, 41: {"lr": 0.05}}
    for step, scalars in written.items():
        writer.write_scalars(step, {k: np.float32(v) for k, v in scalars.items()})
    writer.close()

    events = read_events(event_accumulator, tmp_path)
    assert sorted(events.Tags()["scalars"]) == ["lr", "train/loss"]
    for tag in ("lr", "train/loss"):
        expected = [(step, float(np.float32(s[tag]))) for step, s in written.items() if tag in s]
        assert [(e.step, e.value) for e in events.Scalars(tag)] == expected


def test_images_read_back_by_tensorboard_as_the_same_pixels(tmp_path, event_accumulator):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (1, 5, 7, 3), dtype=np.uint8)
    grey = rng.random((2, 4, 3, 1))  # floats in [0, 1]: scaled to 0..255
    writer = metric_writing.EventFileWriter(str(tmp_path))
    writer.write_images(3, {"affinity": rgb})
    writer.write_images(9, {"affinity": rgb[:, ::-1], "grey": grey})
    writer.flush()

    events = read_events(event_accumulator, tmp_path)
    assert sorted(events.Tags()["images"]) == ["affinity", "grey/image/0", "grey/image/1"]

    def pixels(image_event):
        return np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)))

    first, second = events.Images("affinity")
    assert (first.step, second.step) == (3, 9)
    assert (first.height, first.width) == (5, 7)
    np.testing.assert_array_equal(pixels(first), rgb[0])
    np.testing.assert_array_equal(pixels(second), rgb[0, ::-1])
    for i in range(2):
        (image,) = events.Images(f"grey/image/{i}")
        assert image.step == 9
        np.testing.assert_array_equal(pixels(image), np.round(255 * grey[i, ..., 0]))


def test_two_writers_of_one_folder_write_two_files(tmp_path, event_accumulator):
    for step in (1, 2):  # e.g. a run resumed in the same process within the same second
        writer = metric_writing.EventFileWriter(str(tmp_path))
        writer.write_scalars(step, {"x": float(step)})
        writer.close()
    assert len([n for n in os.listdir(tmp_path) if n.startswith("events.out.tfevents.")]) == 2
    events = read_events(event_accumulator, tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("x")] == [(1, 1.0), (2, 2.0)]


def test_run_writer_writes_jsonl_records_and_event_file(tmp_path, event_accumulator):
    writer = metric_writing.create_writer(str(tmp_path))
    writer.write_scalars(5, {"val/total_error": np.float64(12.5), "epoch": 1})
    writer.write_images(5, {"affinity": np.zeros((1, 2, 2, 3), np.uint8)})
    writer.write_scalars(10, {"train/loss": 0.75})
    writer.flush()

    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records == [
        {"step": 5, "val/total_error": 12.5, "epoch": 1.0},
        {"step": 10, "train/loss": 0.75},
    ]
    events = read_events(event_accumulator, tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("val/total_error")] == [(5, 12.5)]
    assert [e.step for e in events.Images("affinity")] == [5]


def test_training_code_imports_no_tensorflow():
    """The core install has no TensorFlow; where it is installed (the test extra), the training
    and study code still never import it (a slow start)."""
    code = (
        "import sys, tag_jax.main, tag_jax.train, tag_jax.study, tag_jax.metric_writing; "
        "assert 'tensorflow' not in sys.modules, [m for m in sys.modules if 'tensorflow' in m]"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_scalar_reaches_the_log_only_at_verbosity_1(tmp_path, caplog):
    before = logging.get_verbosity()
    try:
        with caplog.at_level("DEBUG", logger="absl"):
            for verbosity, folder in ((0, tmp_path / "quiet"), (1, tmp_path / "verbose")):
                logging.set_verbosity(verbosity)
                writer = metric_writing.create_writer(str(folder))
                writer.write_scalars(7, {"train/loss": 0.5, "epoch": 2})
                writer.flush()
    finally:
        logging.set_verbosity(before)
    assert [r.getMessage() for r in caplog.records] == ["[7] train/loss = 0.5, epoch = 2"]
    for folder in ("quiet", "verbose"):  # the files have it either way
        assert (tmp_path / folder / "metrics.jsonl").read_text().count("train/loss") == 1
