import time

import numpy as np
import pytest

from tag_jax import data
from tag_jax.data import npz, pipeline, synthetic
from tag_jax.errors import UserError


def _toy_dataset(n=10, tasks=("a", "b", "c")):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((n, 2, 2, 1), np.uint8)
    labels = np.stack([np.arange(n) % 2, np.arange(n) % 3, np.zeros(n)], 1).astype(np.int32)
    split = (images, labels[:, : len(tasks)])
    return data.ArrayDataset(tasks, {"train": split, "validation": split, "test": split})


def test_epoch_visits_every_example_once_with_padded_last_batch():
    ds = _toy_dataset(10)
    batches = list(
        ds.batches("train", batch_size=4, seed=3, epoch=0, shuffle=True, drop_remainder=False)
    )
    assert [b["image"].shape[0] for b in batches] == [4, 4, 4]
    assert batches[-1]["mask"].tolist() == [1, 1, 0, 0]
    assert all(b["image"].dtype == np.uint8 for b in batches)  # scaled on the device
    seen = np.concatenate([b["image"][b["mask"] > 0, 0, 0, 0] for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert (batches[-1]["image"][2:] == 0).all()
    dropped = list(
        ds.batches("train", batch_size=4, seed=3, epoch=0, shuffle=True, drop_remainder=True)
    )
    assert len(dropped) == 2 and all(b["mask"].all() for b in dropped)


def test_order_depends_on_seed_and_epoch_and_resume_continues():
    ds = _toy_dataset(12)
    kw = dict(batch_size=4, shuffle=True, drop_remainder=False)
    full = [b["image"] for b in ds.batches("train", seed=1, epoch=2, **kw)]
    resumed = [b["image"] for b in ds.batches("train", seed=1, epoch=2, start_batch=1, **kw)]
    np.testing.assert_array_equal(np.stack(full[1:]), np.stack(resumed))
    other_epoch = [b["image"] for b in ds.batches("train", seed=1, epoch=3, **kw)]
    assert not np.array_equal(np.stack(full), np.stack(other_epoch))


def test_process_shards_partition_the_global_batch():
    ds = _toy_dataset(10)
    kw = dict(batch_size=4, seed=0, epoch=0, shuffle=True, drop_remainder=False)
    whole = list(ds.batches("train", **kw))
    parts = [list(ds.batches("train", process_index=p, process_count=2, **kw)) for p in range(2)]
    for b, (p0, p1) in enumerate(zip(*parts)):
        np.testing.assert_array_equal(np.concatenate([p0["image"], p1["image"]]), whole[b]["image"])
    with pytest.raises(ValueError, match="batch size 4 is not divisible by 3 processes"):
        list(ds.batches("train", process_count=3, **kw))


def test_labels_follow_selected_task_order_and_unknown_task_is_an_error():
    ds = _toy_dataset(6).select_tasks(("c", "a"))
    labels = ds.splits["train"][1]
    np.testing.assert_array_equal(labels[:, 1], np.arange(6) % 2)
    with pytest.raises(UserError, match="valid names"):
        _toy_dataset(6).select_tasks(("a", "zzz"))


def test_synthetic_is_deterministic_and_labels_follow_planted_groups(tiny_config):
    tiny_config.dataset.num_train = 2000
    a, b = synthetic.load(tiny_config), synthetic.load(tiny_config)
    np.testing.assert_array_equal(a.splits["train"][0], b.splits["train"][0])
    labels = a.splits["train"][1].astype(float)
    corr = np.corrcoef(labels.T)
    assert synthetic.planted_groups((2, 2)) == (("g0_t0", "g0_t1"), ("g1_t0", "g1_t1"))
    assert corr[0, 1] > 0.6 and corr[2, 3] > 0.6  # same latent amplitude
    assert abs(corr[0, 2]) < 0.1 and abs(corr[1, 3]) < 0.1  # independent groups
    assert abs(labels.mean() - 0.5) < 0.05


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _valid_arrays(n=20):
    rng = np.random.default_rng(0)
    return dict(
        images=rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8),
        labels=rng.integers(0, 2, (n, 2)),
        task_names=np.array(["x", "y"]),
    )


def test_npz_loads_and_splits_80_10_10(tmp_path):
    ds = npz.load(_write_npz(tmp_path / "ok.npz", **_valid_arrays(20)), num_classes=2)
    assert ds.task_names == ("x", "y")
    assert [ds.num_examples(s) for s in pipeline.SPLITS] == [16, 2, 2]
    batch = next(
        ds.batches("train", batch_size=4, seed=0, epoch=0, shuffle=False, drop_remainder=False)
    )
    assert batch["image"].dtype == np.uint8  # stored uint8: scaled to [0, 1] on the device


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(images=np.zeros((20, 4, 4))), "images must be"),
        (dict(labels=np.zeros((19, 2), np.int64)), "labels must be"),
        (dict(labels=np.full((20, 2), 5)), r"labels must be in \[0, 2\)"),
        (dict(labels=np.zeros((20, 2), np.float32)), "integer classes"),
        (dict(task_names=np.array(["x"])), "task_names must be"),
        (dict(split=np.full(20, 7)), "split must be"),
        (dict(images=np.full((20, 4, 4, 3), np.nan, np.float32)), "NaN"),
    ],
)
def test_npz_validation_errors(tmp_path, change, message):
    path = _write_npz(tmp_path / "bad.npz", **{**_valid_arrays(20), **change})
    with pytest.raises(UserError, match=message):
        npz.load(path, num_classes=2)


def test_npz_missing_file_and_missing_key(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        npz.load(str(tmp_path / "none.npz"), num_classes=2)
    arrays = _valid_arrays()
    del arrays["task_names"]
    with pytest.raises(UserError, match="missing array 'task_names'"):
        npz.load(_write_npz(tmp_path / "k.npz", **arrays), num_classes=2)


def test_npz_byte_string_task_names_are_decoded(tmp_path):
    arrays = {**_valid_arrays(20), "task_names": np.array([b"t0", "t\u00e9".encode()])}
    assert arrays["task_names"].dtype.kind == "S"
    ds = npz.load(_write_npz(tmp_path / "bytes.npz", **arrays), num_classes=2)
    assert ds.task_names == ("t0", "t\u00e9")
    assert all(type(name) is str for name in ds.task_names)
    arrays["task_names"] = np.array([b"t0", b"\xff"])
    with pytest.raises(UserError, match="task_names holds bytes that are not UTF-8 text"):
        npz.load(_write_npz(tmp_path / "latin.npz", **arrays), num_classes=2)


def test_npz_non_square_images_are_refused_naming_the_shape(tmp_path):
    arrays = {**_valid_arrays(20), "images": np.zeros((20, 4, 6, 3), np.uint8)}
    with pytest.raises(UserError, match=r"images must be square \(H = W\), got 4x6 \(shape \(20, "):
        npz.load(_write_npz(tmp_path / "wide.npz", **arrays), num_classes=2)


def _images(values, dtype):
    """(20, 4, 4, 3) images cycling through `values`."""
    return np.resize(np.asarray(values, dtype), (20, 4, 4, 3))


@pytest.mark.parametrize(
    "values, dtype, message",
    [
        ([-1.5, 0.2, 3.0], np.float32, r"images are floats in \[-1.5, 3\], outside the documented"),
        ([0.0, 256.0], np.float64, r"images are floats in \[0, 256\], outside the documented"),
        ([-0.01, 1.0], np.float32, r"images are floats in \[-0.01, 1\]"),
        ([0, 300], np.int32, r"images are integers in \[0, 300\]; pixel values must be"),
        ([-1, 5], np.int16, r"images are integers in \[-1, 5\]"),
        ([True, False], bool, r"images must be integers in \[0, 255\] or floats in \[0, 1\]"),
    ],
)
def test_npz_pixel_values_outside_the_documented_ranges_are_refused(
    tmp_path, values, dtype, message
):
    arrays = {**_valid_arrays(20), "images": _images(values, dtype)}
    with pytest.raises(UserError, match=message):
        npz.load(_write_npz(tmp_path / "range.npz", **arrays), num_classes=2)


def test_npz_pixels_in_range_unit_floats_kept_0_255_values_scaled_with_a_warning(tmp_path, caplog):
    def train_images(images):
        arrays = {**_valid_arrays(20), "images": images, "split": np.zeros(20, int)}
        arrays["split"][:2] = (1, 2)
        ds = npz.load(_write_npz(tmp_path / "p.npz", **arrays), num_classes=2)
        return ds.splits["train"][0]

    unit = _images([0.0, 0.25, 1.0], np.float32)
    np.testing.assert_array_equal(train_images(unit), unit[2:])
    assert "0-255" not in caplog.text
    wide = _images([0, 51, 255], np.int64)  # integers in [0, 255]: kept exactly, as uint8
    kept = train_images(wide)
    assert kept.dtype == np.uint8
    np.testing.assert_array_equal(kept, wide[2:])
    scaled = train_images(_images([0.0, 51.0, 255.0], np.float64))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, _images([0.0, 0.2, 1.0], np.float32)[2:], rtol=1e-6)
    assert "images are floats in [0, 255], not in [0, 1]: read as 0-255 pixel values" in caplog.text


def test_prefetched_keeps_order_stays_bounded_and_closes_its_source():
    produced = []

    def source():
        try:
            for i in range(100):
                produced.append(i)
                yield i
        finally:
            produced.append("closed")

    batches = pipeline.prefetched(source(), ahead=3)
    assert [next(batches) for _ in range(5)] == [0, 1, 2, 3, 4]
    deadline = time.time() + 10
    while len(produced) < 8 and time.time() < deadline:  # the producer fills its slots and waits
        time.sleep(0.01)
    time.sleep(0.1)
    # 5 taken, 3 waiting in the queue, at most 1 more held by the blocked producer.
    assert 8 <= len(produced) <= 9
    batches.close()
    assert produced[-1] == "closed" and len(produced) <= 10
    assert list(pipeline.prefetched(range(7), ahead=2)) == list(range(7))
    assert list(pipeline.prefetched(range(7), ahead=0)) == list(range(7))


def test_prefetched_raises_a_producer_error_in_its_place():
    def source():
        yield 1
        yield 2
        raise ValueError("bad record 3")

    batches = pipeline.prefetched(source(), ahead=4)
    assert next(batches) == 1 and next(batches) == 2
    with pytest.raises(ValueError, match="bad record 3"):
        next(batches)
