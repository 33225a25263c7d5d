"""CelebA input pipeline, offline: `celeba.mock_celeba` (tfds.testing.mock_data) for the batch
stream, and a tiny celeb_a prepared by the real TFDS builder from fake original files for the
preparation step and the TF-free reading path."""

import io
import json
import os
import pathlib
import subprocess
import sys
import zipfile
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.download import checksums
from tensorflow_datasets.datasets.celeb_a import celeb_a_dataset_builder

from tag_jax.data import celeba, load_dataset, prepare_celeba
from tag_jax.default_config import get_base_config
from tag_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_MOCK = 20
BATCH = 8
SIZE = 16
FAKE_PARTITION = (0,) * 10 + (1,) * 4 + (2,) * 3  # 10 train, 4 validation, 3 test


def celeba_config(tasks=(), data_dir="", cache_dir="none"):
    config = get_base_config()
    config.dataset.name = "celeb_a"
    config.dataset.data_dir = data_dir
    config.dataset.cache_dir = cache_dir
    config.dataset.num_workers = 2
    config.image_size = SIZE
    config.batch_size = BATCH
    config.tasks = tasks
    return config


def epoch(dataset, split="train", **kwargs):
    args = dict(batch_size=BATCH, seed=0, epoch=0, shuffle=True, drop_remainder=False)
    return list(dataset.batches(split, **{**args, **kwargs}))


def valid_rows(batches, key):
    return np.concatenate([b[key][b["mask"] > 0] for b in batches])


@pytest.fixture(params=["source", "cache"])
def mocked(request):
    """CelebA with NUM_MOCK random examples per split, the nine default tasks, read from the
    source or (built first) from the default cache folder."""
    cache_dir = "none" if request.param == "source" else ""
    with celeba.mock_celeba(NUM_MOCK):
        yield load_dataset(celeba_config(cache_dir=cache_dir))


def expected_image(dataset, example):
    """What a batch holds for `example`: its resize, or (from the cache) its uint8 rounding."""
    if dataset.caches:
        return celeba.cache_arrays(example, SIZE)[0]
    return celeba.resize_image(example["image"], SIZE)


# --- batch stream (mock data) ---


def test_batches_have_the_documented_shapes_dtypes_range_and_padding(mocked):
    batches = epoch(mocked)
    assert len(batches) == 3  # 8 + 8 + 4 real rows
    for batch in batches:
        image_dtype = (
            np.uint8 if mocked.caches else np.float32
        )  # the cache's uint8, scaled on device
        assert (
            batch["image"].shape == (BATCH, SIZE, SIZE, 3) and batch["image"].dtype == image_dtype
        )
        assert batch["labels"].shape == (BATCH, 9) and batch["labels"].dtype == np.int32
        assert batch["mask"].shape == (BATCH,) and batch["mask"].dtype == np.float32
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= (255 if mocked.caches else 1)
    last = batches[-1]
    np.testing.assert_array_equal(last["mask"], [1] * 4 + [0] * 4)
    assert not last["image"][4:].any() and not last["labels"][4:].any()
    assert mocked.image_shape == (SIZE, SIZE, 3) and mocked.task_names == celeba.CELEBA_9


def test_rows_are_the_examples_labelled_in_config_tasks_order():
    tasks = ("Young", "5_o_Clock_Shadow", "Wearing_Hat", "Male")
    with celeba.mock_celeba(NUM_MOCK):
        dataset = load_dataset(celeba_config(tasks=tasks))
        source = dataset.sources["validation"]
        batches = epoch(dataset, "validation", shuffle=False)
        examples = [source[i] for i in range(NUM_MOCK)]
    expected_labels = [[ex["attributes"][t] for t in tasks] for ex in examples]
    np.testing.assert_array_equal(valid_rows(batches, "labels"), expected_labels)
    expected_images = [celeba.resize_image(ex["image"], SIZE) for ex in examples]
    np.testing.assert_array_equal(valid_rows(batches, "image"), expected_images)


def test_an_epoch_visits_every_example_once(mocked):
    images = valid_rows(epoch(mocked, epoch=3), "image")
    fingerprints = {image.tobytes() for image in images}
    all_examples = {
        expected_image(mocked, mocked.sources["train"][i]).tobytes() for i in range(NUM_MOCK)
    }
    assert len(images) == NUM_MOCK and fingerprints == all_examples


def test_resuming_at_start_batch_yields_the_same_later_batches(mocked):
    full = epoch(mocked, epoch=1)
    resumed = epoch(mocked, epoch=1, start_batch=1)
    assert len(resumed) == len(full) - 1
    for a, b in zip(full[1:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_drop_remainder_keeps_only_full_batches(mocked):
    batches = epoch(mocked, drop_remainder=True)
    assert len(batches) == NUM_MOCK // BATCH
    assert all(b["mask"].all() for b in batches)


def test_processes_read_disjoint_rows_whose_union_is_the_global_batch(mocked):
    whole = epoch(mocked, epoch=2)
    shards = [epoch(mocked, epoch=2, process_index=p, process_count=2) for p in range(2)]
    for b, batch in enumerate(whole):
        for key in batch:
            joined = np.concatenate([shards[0][b][key], shards[1][b][key]])
            np.testing.assert_array_equal(joined, batch[key])


def test_empty_epoch_when_start_batch_is_past_the_end(mocked):
    assert epoch(mocked, start_batch=3) == []


def test_labels_are_the_batches_labels_in_example_order(mocked):
    labels = mocked.labels("validation")
    assert labels.shape == (NUM_MOCK, 9) and labels.dtype == np.int32
    np.testing.assert_array_equal(
        labels, valid_rows(epoch(mocked, "validation", shuffle=False), "labels")
    )


# --- the uint8 cache ---


def cache_folders(root):
    return sorted(p.name for p in pathlib.Path(root).iterdir() if not p.name.startswith("."))


def test_cache_holds_uint8_images_and_all_attributes_close_to_the_source(tmp_path):
    tasks = ("Male", "Young")
    with celeba.mock_celeba(NUM_MOCK):
        cached = load_dataset(celeba_config(tasks, cache_dir=str(tmp_path)))
        source = load_dataset(celeba_config(tasks))
        assert source.caches is None
        split = cached.caches["validation"]
        assert split.images.shape == (NUM_MOCK, SIZE, SIZE, 3) and split.images.dtype == np.uint8
        assert split.attributes.shape == (NUM_MOCK, 40) and isinstance(split.images, np.memmap)
        meta = json.loads((pathlib.Path(split.path) / "meta.json").read_text())
        assert (meta["split"], meta["image_size"], meta["num_examples"]) == (
            "validation",
            SIZE,
            NUM_MOCK,
        )
        from_cache = epoch(cached, "validation", shuffle=False)
        from_source = epoch(source, "validation", shuffle=False)
        assert from_cache[0]["image"].dtype == np.uint8
        np.testing.assert_allclose(
            valid_rows(from_cache, "image") / np.float32(255),
            valid_rows(from_source, "image"),
            atol=0.5 / 255 + 1e-6,
            rtol=0,
        )
        np.testing.assert_array_equal(
            valid_rows(from_cache, "labels"), valid_rows(from_source, "labels")
        )
        np.testing.assert_array_equal(cached.labels("test"), source.labels("test"))
    names = cache_folders(tmp_path)
    assert len(names) == 3 and all(f"-{SIZE}px-" in n for n in names)


def test_cache_is_read_not_rebuilt_and_is_keyed_by_image_size(tmp_path):
    with celeba.mock_celeba(NUM_MOCK):
        load_dataset(celeba_config(cache_dir=str(tmp_path)))
        with mock.patch.object(celeba.celeba_cache, "build", side_effect=AssertionError("rebuilt")):
            again = load_dataset(celeba_config(cache_dir=str(tmp_path)))
        assert again.caches["train"].images.shape[0] == NUM_MOCK
        config = celeba_config(cache_dir=str(tmp_path))
        config.image_size = 12
        assert load_dataset(config).caches["train"].images.shape[1:3] == (12, 12)
    assert len(cache_folders(tmp_path)) == 6


def test_a_changed_source_rebuilds_the_cache_and_deletes_the_old_one(tmp_path):
    with celeba.mock_celeba(NUM_MOCK):
        load_dataset(celeba_config(cache_dir=str(tmp_path)))
    old = cache_folders(tmp_path)
    with celeba.mock_celeba(NUM_MOCK + 4):
        dataset = load_dataset(celeba_config(cache_dir=str(tmp_path)))
    assert dataset.caches["train"].images.shape[0] == NUM_MOCK + 4
    new = cache_folders(tmp_path)
    assert len(new) == 3 and not set(old) & set(new)


def test_an_interrupted_build_leaves_no_cache_and_resumes_where_it_stopped(tmp_path):
    reads = []
    original = celeba.cache_arrays

    def failing(example, image_size):
        if len(reads) == 12:
            raise KeyboardInterrupt
        reads.append(1)
        return original(example, image_size)

    with celeba.mock_celeba(NUM_MOCK), mock.patch.object(celeba.celeba_cache, "CHUNK", 4):
        with (
            mock.patch.object(celeba, "cache_arrays", failing),
            mock.patch(
                "concurrent.futures.ThreadPoolExecutor.map", lambda self, fn, items: map(fn, items)
            ),
            pytest.raises(KeyboardInterrupt),
        ):
            load_dataset(celeba_config(cache_dir=str(tmp_path)))
        assert not [n for n in cache_folders(tmp_path) if not n.endswith(".partial")]
        progress = json.loads(next(tmp_path.glob("*.partial/progress.json")).read_text())
        assert progress == {"done": 12}
        resumed = []
        with mock.patch.object(
            celeba, "cache_arrays", lambda *a: resumed.append(1) or original(*a)
        ):
            dataset = load_dataset(celeba_config(cache_dir=str(tmp_path)))
        assert len(resumed) == 3 * NUM_MOCK - 12  # the train split continued at example 12
        whole = load_dataset(celeba_config(cache_dir=str(tmp_path / "whole")))
        np.testing.assert_array_equal(dataset.caches["train"].images, whole.caches["train"].images)


# --- tasks, resize, errors ---


def test_task_constants_match_the_tfds_feature_spec(tmp_path):
    attributes = tfds.builder("celeb_a", data_dir=tmp_path).info.features["attributes"]
    assert celeba.CELEBA_40 == tuple(attributes.keys())
    assert set(celeba.CELEBA_9) <= set(celeba.CELEBA_40) and len(celeba.CELEBA_9) == 9


def test_unknown_task_is_a_user_error_listing_valid_names():
    with pytest.raises(UserError, match="Smiling") as error:
        celeba.load(celeba_config(tasks=("Smiling", "Wearing_Sunglasses")))
    assert "Wearing_Sunglasses" in str(error.value)


def test_missing_data_is_a_one_line_user_error_naming_the_dir(tmp_path):
    with pytest.raises(UserError, match="prepare_celeba") as error:
        load_dataset(celeba_config(data_dir=str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "prepare_celeba" in message and "data/prepare_celeba.md" in message


@pytest.mark.parametrize(
    "shape,size", [((218, 178, 3), 64), ((218, 178, 3), 16), ((5, 7, 3), 9), ((16, 16, 1), 16)]
)
def test_resize_equals_tf_image_resize(shape, size):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    expected = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [size, size]).numpy()
    np.testing.assert_allclose(celeba.resize_image(image, size), expected, atol=1e-5, rtol=0)


# --- preparation and TF-free reading of real ArrayRecord files ---


def write_fake_originals(directory: pathlib.Path) -> dict:
    """The five original CelebA files, in their formats, for len(FAKE_PARTITION) random images.

    Returns landmarks tuple -> attributes (+1/-1 row), to identify examples after preparation.
    """
    rng = np.random.default_rng(0)
    names = [f"{i + 1:06d}.jpg" for i in range(len(FAKE_PARTITION))]
    with zipfile.ZipFile(directory / "img_align_celeba.zip", "w") as archive:
        for name in names:
            jpeg = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(jpeg, "JPEG")
            archive.writestr(f"img_align_celeba/{name}", jpeg.getvalue())
    attributes = rng.choice([-1, 1], (len(names), len(celeba.CELEBA_40)))
    landmarks = rng.permutation(len(names) * 10).reshape(len(names), 10)

    def table(header, rows):
        body = "".join(f"{n} {' '.join(map(str, r))}\n" for n, r in zip(names, rows))
        return f"{len(names)}\n{' '.join(header)}\n{body}"

    files = {
        "list_eval_partition.txt": "".join(f"{n} {p}\n" for n, p in zip(names, FAKE_PARTITION)),
        "list_attr_celeba.txt": table(celeba.CELEBA_40, attributes),
        "list_landmarks_align_celeba.txt": table(
            celeb_a_dataset_builder.LANDMARK_HEADINGS, landmarks
        ),
        "identity_CelebA.txt": "".join(f"{n} {i % 3 + 1}\n" for i, n in enumerate(names)),
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    return {tuple(lm): attrs for lm, attrs in zip(landmarks, attributes)}


def registered_url_infos() -> dict:
    """url -> UrlInfo of the celeb_a builder's checksums.tsv (read without importlib_resources)."""
    path = pathlib.Path(celeb_a_dataset_builder.__file__).with_name("checksums.tsv")
    return checksums.load_url_infos(path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data_dir, landmarks -> attributes) of a celeb_a prepared by `prepare_celeba.main`.

    The fake files cannot match the registered checksums, so the builder is given theirs: the
    rest (manual_dir lookup by file name, parsing, ArrayRecord writing) is TFDS's real code.
    """
    originals, data_dir = tmp_path_factory.mktemp("originals"), tmp_path_factory.mktemp("tfds")
    attributes_by_landmarks = write_fake_originals(originals)
    fake_url_infos = {
        url: checksums.compute_url_info(originals / info.filename)
        for url, info in registered_url_infos().items()
    }
    with mock.patch.object(tfds.core.DatasetBuilder, "url_infos", fake_url_infos):
        status = prepare_celeba.main(["--manual_dir", str(originals), "--data_dir", str(data_dir)])
    assert status == 0
    return str(data_dir), attributes_by_landmarks


def test_prepare_writes_array_record_splits_from_the_partition_file(prepared):
    data_dir, _ = prepared
    dataset = load_dataset(celeba_config(data_dir=data_dir))
    sizes = {split: dataset.num_examples(split) for split in ("train", "validation", "test")}
    assert sizes == {"train": 10, "validation": 4, "test": 3}
    version_dir = pathlib.Path(data_dir, "celeb_a", "2.1.0")
    assert sorted(version_dir.glob("celeb_a-train.array_record-*"))


def test_prepared_labels_equal_the_original_attribute_file(prepared):
    data_dir, attributes_by_landmarks = prepared
    tasks = ("Male", "Bald", "5_o_Clock_Shadow")
    dataset = load_dataset(celeba_config(tasks, data_dir))
    source = dataset.sources["test"]
    expected = []
    for i in range(len(source)):
        landmarks = tuple(
            source[i]["landmarks"][k] for k in celeb_a_dataset_builder.LANDMARK_HEADINGS
        )
        row = attributes_by_landmarks[landmarks]
        expected.append([int(row[celeba.CELEBA_40.index(t)] > 0) for t in tasks])
    labels = valid_rows(epoch(dataset, "test", shuffle=False), "labels")
    np.testing.assert_array_equal(labels, expected)


def test_prepare_names_missing_original_files_in_one_line(tmp_path):
    (tmp_path / "list_attr_celeba.txt").write_text("1\n")
    with mock.patch.object(tfds.core.DatasetBuilder, "url_infos", registered_url_infos()):
        with pytest.raises(UserError, match="img_align_celeba.zip is missing") as error:
            prepare_celeba.prepare(str(tmp_path), str(tmp_path / "tfds"))
    message = str(error.value)
    assert "\n" not in message and "img_align_celeba.zip is missing" in message
    assert "list_attr_celeba.txt has 2 bytes, expected 26721026" in message


def test_preparation_doc_lists_every_original_file_and_its_size():
    doc = (REPO / "data" / "prepare_celeba.md").read_text()
    for info in registered_url_infos().values():
        assert info.filename in doc and f"{int(info.size):,}" in doc


TRAIN_WITHOUT_TENSORFLOW = """
import sys
from tag_jax.data import load_dataset
from tag_jax.default_config import get_base_config
config = get_base_config()
config.dataset.name, config.dataset.data_dir, config.image_size = "celeb_a", sys.argv[1], 16
dataset = load_dataset(config)
seen = sum(b["mask"].sum() for b in dataset.batches(
    "train", batch_size=4, seed=0, epoch=0, shuffle=True, drop_remainder=False))
assert seen == dataset.num_examples("train") == 10, seen
assert dataset.caches is not None  # built next to the data on first use
config.dataset.cache_dir = "none"
uncached = load_dataset(config)
assert (uncached.labels("train") == dataset.labels("train")).all()
assert "tensorflow" not in sys.modules, "reading imported TensorFlow"
"""


def test_reading_prepared_data_does_not_import_tensorflow(prepared):
    data_dir, _ = prepared
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_WITHOUT_TENSORFLOW, data_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
