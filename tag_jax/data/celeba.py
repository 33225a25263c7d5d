"""CelebA face attributes (TFDS `celeb_a`, prepared as ArrayRecord) as a `Dataset`.

Reading needs no TensorFlow: `tfds` random-access sources over the ArrayRecord
files decode each example with numpy and PIL, and grain threads read, decode
and resize the examples of `pipeline.batch_index_lists` (the batch order every
dataset shares) ahead of the consumer. Each task is one attribute, label 0/1.
The resize equals the reference's `tf.image.resize`; the JPEG decoding is
PIL's accurate integer DCT where TensorFlow's default is the fast one, so a
pixel can differ from the reference's by a few 1/255 steps.
Preparing the data is `tag_jax.data.prepare_celeba` (see data/prepare_celeba.md).

By default every split is resized once into a uint8 cache on disk (tag_jax.data.celeba_cache,
`config.dataset.cache_dir`), built on first use, and read memory-mapped by as many threads as
the host has cores; `config.dataset.cache_dir = 'none'` reads the JPEGs every epoch instead.
"""

import contextlib
import dataclasses
import functools
import os
import tempfile
from typing import Iterator, Optional, Sequence
from unittest import mock

import grain
import numpy as np
import tensorflow_datasets as tfds

from tag_jax.data import celeba_cache, pipeline
from tag_jax.data.base import task_columns
from tag_jax.errors import UserError

TFDS_NAME = "celeb_a"
PREPARE_HINT = (
    "prepare it with `python -m tag_jax.data.prepare_celeba --manual_dir DIR "
    "--data_dir DATA_DIR` (see data/prepare_celeba.md)"
)

# The nine attributes of the TAG / HOA papers' CelebA experiments, in their order.
CELEBA_9 = (
    "5_o_Clock_Shadow",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Goatee",
    "Mustache",
    "No_Beard",
    "Rosy_Cheeks",
    "Wearing_Hat",
)
# All 40 attributes, in the order of the TFDS feature spec `attributes`.
CELEBA_40 = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)


@functools.lru_cache(maxsize=None)
def _sample_points(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel: lower and upper source pixel and the upper one's weight (out_size,) each.

    Half-pixel centres, computed in float32 like TensorFlow's bilinear kernel.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    centre = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centre)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(centre), in_size - 1).astype(np.int64)
    return lower, upper, centre - floor


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, C) -> float32 (size, size, C) in [0, 1].

    Equals `tf.image.resize(tf.cast(image, tf.float32) / 255., [size, size])`
    (bilinear, half-pixel centres, no antialiasing, aspect ratio not kept); the
    four neighbours are gathered before the (elementwise) scaling, which does
    not change the result.
    """
    y_lower, y_upper, y_weight = _sample_points(image.shape[0], size)
    x_lower, x_upper, x_weight = _sample_points(image.shape[1], size)
    x_weight = x_weight[:, None]

    def row_interpolated(rows):
        left = rows[:, x_lower].astype(np.float32) / np.float32(255)
        right = rows[:, x_upper].astype(np.float32) / np.float32(255)
        return left + (right - left) * x_weight

    top, bottom = row_interpolated(image[y_lower]), row_interpolated(image[y_upper])
    return top + (bottom - top) * y_weight[:, None, None]


def example_arrays(example: dict, task_names: Sequence[str], image_size: int):
    """A decoded TFDS celeb_a example -> (image (S, S, 3) float32 in [0, 1], labels (T,) int32)."""
    labels = np.array([example["attributes"][name] for name in task_names], np.int32)
    return resize_image(example["image"], image_size), labels


def cache_arrays(example: dict, image_size: int):
    """A decoded example -> (image (S, S, 3) uint8 = round(255 * resize), attributes (40,)
    uint8)."""
    image = np.rint(resize_image(example["image"], image_size) * np.float32(255)).astype(np.uint8)
    return image, np.array([example["attributes"][name] for name in CELEBA_40], np.uint8)


@dataclasses.dataclass(frozen=True)
class CelebA:
    """The attributes `task_names` of CelebA; `sources[split][i]` is a decoded TFDS example."""

    sources: dict
    task_names: tuple[str, ...]
    image_size: int
    num_workers: int
    # split -> celeba_cache.SplitCache, read instead of the sources (None: no cache).
    caches: Optional[dict] = None
    # split -> a source whose examples skip image decoding (labels without the cache).
    label_sources: Optional[dict] = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def num_examples(self, split: str) -> int:
        return len(self.sources[split])

    def labels(self, split: str) -> np.ndarray:
        """(N, T) int32 labels of a split in example order, read without decoding any image: from
        the cache when there is one, else from the source's attribute records."""
        if self.caches:
            columns = [CELEBA_40.index(name) for name in self.task_names]
            return np.asarray(self.caches[split].attributes[:, columns], np.int32)
        source = (self.label_sources or self.sources)[split]
        rows = [
            [source[i]["attributes"][name] for name in self.task_names] for i in range(len(source))
        ]
        return np.array(rows, np.int32).reshape(len(source), len(self.task_names))

    def _read(self, source, index: int):
        """Example `index` of `source` as arrays; zeros for padding (index -1)."""
        if index < 0:
            return (
                np.zeros(self.image_shape, np.float32),
                np.zeros(len(self.task_names), np.int32),
            )
        return example_arrays(source[int(index)], self.task_names, self.image_size)

    def batches(
        self,
        split,
        *,
        batch_size,
        seed,
        epoch,
        shuffle,
        drop_remainder,
        start_batch=0,
        process_index=0,
        process_count=1,
    ) -> Iterator[dict]:
        """Padded batches of one epoch from `start_batch` on, this process's rows (see `pipeline`).

        From the cache: one thread per core gathers whole batches, up to two per thread ahead of
        the consumer. From the source: `num_workers` threads read and preprocess examples in
        order, up to two local batches ahead of the consumer.
        """
        source = self.sources[split]
        index_lists = list(
            pipeline.batch_index_lists(
                len(source),
                batch_size=batch_size,
                seed=seed,
                epoch=epoch,
                shuffle=shuffle,
                drop_remainder=drop_remainder,
                start_batch=start_batch,
                process_index=process_index,
                process_count=process_count,
            )
        )
        if not index_lists:
            return
        if self.caches:
            images, labels = self.caches[split].images, self.labels(split)
            yield from pipeline.gathered_batches(images, labels, index_lists)
            return
        local_batch_size = len(index_lists[0])
        examples = grain.MapDataset.source(np.concatenate(index_lists)).map(
            functools.partial(self._read, source)
        )
        read_options = grain.ReadOptions(
            num_threads=self.num_workers, prefetch_buffer_size=2 * local_batch_size
        )
        stacked = examples.to_iter_dataset(read_options).batch(local_batch_size)
        rows = np.arange(local_batch_size)
        for indices, (images, labels) in zip(index_lists, stacked):
            yield pipeline.assemble_batch(images, labels, np.where(indices >= 0, rows, -1))


def open_builder(data_dir: str):
    """The TFDS builder of a prepared ArrayRecord celeb_a in `data_dir`; else a UserError."""
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir or None)
    if not builder.is_prepared():
        raise UserError(
            f"CelebA ({TFDS_NAME} {builder.version}) is not prepared in {builder.data_dir} "
            f"(config.dataset.data_dir={data_dir!r}): {PREPARE_HINT}"
        )
    if tfds.core.FileFormat.ARRAY_RECORD not in builder.info.available_file_formats():
        raise UserError(
            f"CelebA in {builder.data_dir} has no array_record files (random access needs "
            f"them): convert it with `tfds convert_format --dataset_version_dir "
            f"{builder.data_dir} --out_file_format array_record`"
        )
    return builder


def open_sources(data_dir: str, builder=None, **kwargs) -> dict:
    """split -> random-access source of the prepared ArrayRecord celeb_a; else a UserError.
    kwargs go to `as_data_source` (e.g. decoders)."""
    builder = builder or open_builder(data_dir)
    return builder.as_data_source(
        split={split: split for split in pipeline.SPLITS},
        file_format=tfds.core.FileFormat.ARRAY_RECORD,
        **kwargs,
    )


def default_cache_parent(builder) -> str:
    """The TFDS data_dir the builder reads (its data_dir is <data_dir>/celeb_a/<version>)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(builder.data_dir)))


def open_caches(builder, sources: dict, cache_dir: str, image_size: int) -> Optional[dict]:
    """split -> celeba_cache.SplitCache of every split at `image_size` (built where missing);
    None when cache_dir is 'none'."""
    root = celeba_cache.cache_root(cache_dir, default_cache_parent(builder))
    if root is None:
        return None
    version = str(builder.version)
    caches = {}
    for split, source in sources.items():
        split_files = [
            os.path.join(builder.data_dir, f)
            for f in _listdir(builder.data_dir)
            if f.startswith(f"{TFDS_NAME}-{split}.array_record")
        ]
        digest = celeba_cache.source_digest(source, split_files, version, CELEBA_40)
        caches[split] = celeba_cache.ensure(
            root,
            celeba_cache.key(version, split, image_size, digest),
            source,
            lambda i, source=source: cache_arrays(source[int(i)], image_size),
            image_size=image_size,
            num_attributes=len(CELEBA_40),
            workers=os.cpu_count() or 1,
            meta={
                "dataset": TFDS_NAME,
                "version": version,
                "split": split,
                "num_examples": len(source),
                "image_size": image_size,
                "digest": digest,
                "attributes": list(CELEBA_40),
                "format": celeba_cache.FORMAT,
                "images": "round(255 * celeba.resize_image(image, image_size)), uint8",
            },
        )
    return caches


def _listdir(path: str) -> list:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def load(config) -> CelebA:
    """CelebA with tasks `config.tasks` (empty = CELEBA_9), images resized to `config.image_size`,
    through the cache of `config.dataset.cache_dir` (built on first use) unless it is 'none'."""
    task_names = tuple(config.tasks) or CELEBA_9
    task_columns(CELEBA_40, task_names)
    builder = open_builder(config.dataset.data_dir)
    sources = open_sources(config.dataset.data_dir, builder)
    label_sources = open_sources(
        config.dataset.data_dir, builder, decoders={"image": tfds.decode.SkipDecoding()}
    )
    return CelebA(
        sources,
        task_names,
        config.image_size,
        config.dataset.num_workers,
        caches=open_caches(builder, sources, config.dataset.cache_dir, config.image_size),
        label_sources=label_sources,
    )


@contextlib.contextmanager
def mock_celeba(num_examples: int):
    """Offline stand-in for prepared CelebA, for tests and benchmarks.

    Every split has `num_examples` random examples of the real feature spec
    (uint8 218x178x3 images, handed over decoded: no JPEG decoding), whatever
    `config.dataset.data_dir` says; `tfds.testing.mock_data` replaces the
    reading, and the preflight checks of `open_builder` see a prepared
    ArrayRecord dataset. The default cache folder (`config.dataset.cache_dir = ''`) is a
    temporary one, deleted at the end.
    """
    from tensorflow_datasets import testing  # pylint: disable=g-import-not-at-top

    with (
        testing.mock_data(num_examples=num_examples),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
        mock.patch.object(
            tfds.core.DatasetInfo,
            "available_file_formats",
            return_value={tfds.core.FileFormat.ARRAY_RECORD},
        ),
        tempfile.TemporaryDirectory(prefix="mock_celeba_") as data_dir,
        mock.patch(f"{__name__}.default_cache_parent", return_value=data_dir),
    ):
        yield
