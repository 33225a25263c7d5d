"""CelebA resized once into a uint8 cache on disk, read memory-mapped.

Decoding and resizing every JPEG every epoch reads a few hundred examples/s per core; the
cache holds each split at one image size as two .npy files, read through `np.load(...,
mmap_mode='r')`:

    <root>/celeb_a-<tfds version>-<split>-<size>px-<source digest>/
        images.npy      (N, size, size, 3) uint8: round(255 * the resize of celeba.resize_image)
        attributes.npy  (N, 40) uint8: all 40 attributes (0/1) in CELEBA_40 order
        meta.json       what it was built from

The folder name is the key: image size, split, and a digest of the source (TFDS version,
number of examples, names/sizes/modification times of the split's ArrayRecord files, and the
content of its first, middle and last example), so a changed source gets a new cache and the
old one is deleted once the new one is complete.

Building is resumable and atomic: examples are written in chunks into `<key>.partial/` (the
count done is saved after every chunk, so a killed build continues where it stopped), progress
is logged, and the finished folder is renamed to `<key>` (a folder that exists is complete).
An flock on `<root>/.<key>.lock` lets one process build while others wait for it.
The uint8 rounding moves a pixel by at most 0.5/255 from the float resize of the uncached path.
"""

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import shutil
import time

import numpy as np
from absl import logging

from tag_jax import reporting

FORMAT = 1  # bump when the layout changes: old caches are then rebuilt
CHUNK = 2048  # examples written between saves of the progress
PROGRESS_SECONDS = 10.0  # at most this long between progress lines
DISABLED = "none"  # config.dataset.cache_dir value that turns the cache off
DEFAULT_FOLDER = "tag_jax_cache"  # '' = this folder in the TFDS data_dir


@dataclasses.dataclass(frozen=True)
class SplitCache:
    """One split at one size: images (N, S, S, 3) uint8 and attributes (N, 40) uint8,
    memory-mapped."""

    path: str
    images: np.ndarray
    attributes: np.ndarray


def cache_root(cache_dir: str, data_dir_root: str) -> str | None:
    """The folder caches live in: `cache_dir`, or (for '') `<data_dir_root>/tag_jax_cache`; None
    for 'none' (no cache)."""
    if cache_dir == DISABLED:
        return None
    return cache_dir or os.path.join(data_dir_root, DEFAULT_FOLDER)


def source_digest(source, files, version: str, attribute_names) -> str:
    """16 hex digits of the source's version, size, files and first/middle/last examples."""
    stats = sorted((os.path.basename(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files)
    content = hashlib.sha256(json.dumps([FORMAT, version, len(source), stats]).encode())
    for i in sorted({0, len(source) // 2, len(source) - 1}):
        example = source[i]
        content.update(np.ascontiguousarray(example["image"]).tobytes())
        content.update(bytes(int(example["attributes"][a]) for a in attribute_names))
    return content.hexdigest()[:16]


def key(version: str, split: str, image_size: int, digest: str) -> str:
    return f"celeb_a-{version}-{split}-{image_size}px-{digest}"


def open_split(path: str) -> SplitCache:
    return SplitCache(
        path,
        np.load(os.path.join(path, "images.npy"), mmap_mode="r"),
        np.load(os.path.join(path, "attributes.npy"), mmap_mode="r"),
    )


def lock_path(root: str, name: str) -> str:
    return os.path.join(root, f".{name}.lock")


@contextlib.contextmanager
def _locked(path: str):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure(
    root: str,
    name: str,
    source,
    read_example,
    *,
    image_size: int,
    num_attributes: int,
    meta: dict,
    workers: int,
) -> SplitCache:
    """The cache `<root>/<name>`, built first (resuming a partial build) if it does not exist.

    read_example(i) -> (image (S, S, 3) uint8, attributes (num_attributes,) uint8) of source[i].
    meta is written into meta.json. Once built, other complete caches of the same split and size
    (an older source) are deleted.
    """
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, name)
    if not os.path.exists(final):
        with _locked(lock_path(root, name)):
            if not os.path.exists(final):  # another process may have built it while we waited
                partial = final + ".partial"
                build(
                    partial,
                    len(source),
                    read_example,
                    image_size=image_size,
                    num_attributes=num_attributes,
                    workers=workers,
                    name=name,
                )
                reporting.write_json_atomic(os.path.join(partial, "meta.json"), meta)
                os.rename(partial, final)
                remove_stale(root, name)
    return open_split(final)


def remove_stale(root: str, name: str) -> None:
    """Deletes the complete caches of the same split and size built from another source."""
    prefix = name.rsplit("-", 1)[0] + "-"
    for path in glob.glob(os.path.join(root, prefix + "*")):
        if os.path.isdir(path) and not path.endswith(".partial") and os.path.basename(path) != name:
            logging.info("Deleting the CelebA cache %s (its source changed).", path)
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.remove(lock_path(root, os.path.basename(path)))


def _open_arrays(partial: str, num_examples: int, image_size: int, num_attributes: int):
    """(images, attributes, done) of a partial build: resumed if its shapes fit, else new."""
    shapes = {
        "images.npy": (num_examples, image_size, image_size, 3),
        "attributes.npy": (num_examples, num_attributes),
    }
    progress = os.path.join(partial, "progress.json")
    try:
        with open(progress) as f:
            done = int(json.load(f)["done"])
        arrays = [np.lib.format.open_memmap(os.path.join(partial, n), mode="r+") for n in shapes]
        if [a.shape for a in arrays] == list(shapes.values()) and 0 <= done <= num_examples:
            return (*arrays, done)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    arrays = [
        np.lib.format.open_memmap(os.path.join(partial, n), mode="w+", dtype=np.uint8, shape=s)
        for n, s in shapes.items()
    ]
    return (*arrays, 0)


def build(
    partial: str,
    num_examples: int,
    read_example,
    *,
    image_size: int,
    num_attributes: int,
    workers: int,
    name: str,
) -> None:
    """Fills `partial` chunk by chunk with `workers` threads, saving the count done after each
    chunk and logging progress."""
    images, attributes, done = _open_arrays(partial, num_examples, image_size, num_attributes)
    if done:
        logging.info("Resuming the CelebA cache %s at %d of %d examples.", name, done, num_examples)
    else:
        logging.info(
            "Building the CelebA cache %s: %d examples (once; later runs read it).",
            name,
            num_examples,
        )
    start, resumed_at, last_report = time.time(), done, 0.0
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        while done < num_examples:
            end = min(done + CHUNK, num_examples)
            for i, (image, attrs) in zip(
                range(done, end), pool.map(read_example, range(done, end))
            ):
                images[i], attributes[i] = image, attrs
            images.flush()
            attributes.flush()
            done = end
            reporting.write_json_atomic(os.path.join(partial, "progress.json"), {"done": done})
            now = time.time()
            if now - last_report >= PROGRESS_SECONDS or done == num_examples:
                last_report = now
                rate = (done - resumed_at) / max(now - start, 1e-9)
                logging.info(
                    "CelebA cache %s: %d/%d examples (%.0f/s, about %.0f s left)",
                    name,
                    done,
                    num_examples,
                    rate,
                    (num_examples - done) / max(rate, 1e-9),
                )
    del images, attributes  # close the memory maps before the folder is renamed
