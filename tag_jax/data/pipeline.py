"""Batch order shared by every dataset: seeded epoch permutations, padded batches, process shards.

A batch is a dict of numpy arrays `{'image': (B, H, W, C) uint8 (0-255) when the
source stores uint8 (the CelebA cache, npz files), else float32 in the data's range,
'labels': (B, T) int32, 'mask': (B,) float32}`; uint8 images travel to the device
as they are (a quarter of float32's bytes) and the model scales them to [0, 1]
there (`models.pixels_as_float`); `mask` is 0 for padding
rows, so a last partial batch keeps the batch shape (one compiled step) while
losses, metrics and batch-norm statistics see only real examples. The position
in the stream is `(epoch, batch_index)`, which is all a checkpoint needs to
resume with the next unseen batch.
"""

import collections
import concurrent.futures
import os
import queue
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

SPLITS = ("train", "validation", "test")


def epoch_order(num_examples: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Example indices of one epoch: a permutation seeded by (seed, epoch), or 0..N-1."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def process_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
    """Rows of every global batch that process `process_index` loads."""
    if global_batch_size % process_count:
        raise ValueError(
            f"batch size {global_batch_size} is not divisible by {process_count} processes"
        )
    local = global_batch_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


def batch_index_lists(
    num_examples: int,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    drop_remainder: bool,
    start_batch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[np.ndarray]:
    """For each batch of the epoch from `start_batch` on:
    this process's example indices, -1 = padding."""
    order = epoch_order(num_examples, seed=seed, epoch=epoch, shuffle=shuffle)
    rows = process_slice(batch_size, process_index, process_count)
    for b in range(start_batch, num_batches(num_examples, batch_size, drop_remainder)):
        indices = np.full(batch_size, -1, np.int64)
        chunk = order[b * batch_size : (b + 1) * batch_size]
        indices[: len(chunk)] = chunk
        yield indices[rows]


def assemble_batch(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> dict:
    """Gathers rows `indices` (-1 = padding, zero-filled) into a padded batch dict; uint8 images
    stay uint8, others become float32."""
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    image = np.asarray(images[safe], np.uint8 if images.dtype == np.uint8 else np.float32)
    image[~valid] = 0
    label = np.where(valid[:, None], labels[safe], 0).astype(np.int32)
    return {"image": image, "labels": label, "mask": valid.astype(np.float32)}


def gathered_batches(images: np.ndarray, labels: np.ndarray, index_lists: list) -> Iterator[dict]:
    """assemble_batch of each index list, in order, gathered by one thread per core (numpy's
    gather releases the GIL) up to two batches per thread ahead of the consumer."""
    workers = os.cpu_count() or 1
    return threaded_map(
        lambda indices: assemble_batch(images, labels, indices),
        index_lists,
        workers=workers,
        ahead=2 * workers,
    )


def threaded_map(fn: Callable, items: Iterable, *, workers: int, ahead: int) -> Iterator:
    """fn(item) for each item, in order, computed by `workers` threads at most `ahead` items ahead
    of the consumer."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def prefetched(items: Iterable, *, ahead: int) -> Iterator:
    """The items of `items` in order, produced by one background thread at most `ahead` items
    ahead of the consumer (the next batches are read and copied to the device while a step runs).

    An exception raised while producing an item is raised to the consumer in that item's place.
    Closing the returned generator (or leaving a `with contextlib.closing(...)`) stops the thread
    and closes `items`. ahead <= 0: `items` is iterated in the caller's thread.
    """
    if ahead <= 0:
        yield from items
        return
    slots = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        iterator = None
        try:
            iterator = iter(items)
            for item in iterator:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # pylint: disable=broad-except (handed to the consumer)
            put((end, e))
        finally:
            if iterator is not None:
                getattr(iterator, "close", lambda: None)()

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()
