"""The dataset interface every source implements, and the in-memory implementation."""

import dataclasses
from typing import Iterator, Protocol, Sequence

import numpy as np

from tag_jax.data import pipeline
from tag_jax.errors import UserError


class Dataset(Protocol):
    """A multi-task image dataset: T tasks, named, each with integer class labels."""

    task_names: tuple[str, ...]
    image_shape: tuple[int, int, int]

    def num_examples(self, split: str) -> int: ...

    def labels(self, split: str) -> np.ndarray:
        """(N, T) int32 class labels of a split, in example order (no images read)."""
        ...

    def batches(
        self,
        split: str,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        shuffle: bool,
        drop_remainder: bool,
        start_batch: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[dict]:
        """Padded batches (see `pipeline`) of one epoch from `start_batch` on,
        this process's rows."""
        ...


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A dataset held in memory. splits[name] =
    (images (N, H, W, C) uint8|float, labels (N, T) int)."""

    task_names: tuple[str, ...]
    splits: dict

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.splits["train"][0].shape[1:])

    def num_examples(self, split: str) -> int:
        return len(self.splits[split][1])

    def labels(self, split: str) -> np.ndarray:
        return np.asarray(self.splits[split][1], np.int32)

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
    ):
        images, labels = self.splits[split]
        return pipeline.gathered_batches(
            images,
            labels,
            list(
                pipeline.batch_index_lists(
                    len(labels),
                    batch_size=batch_size,
                    seed=seed,
                    epoch=epoch,
                    shuffle=shuffle,
                    drop_remainder=drop_remainder,
                    start_batch=start_batch,
                    process_index=process_index,
                    process_count=process_count,
                )
            ),
        )

    def select_tasks(self, names: Sequence[str]) -> "ArrayDataset":
        columns = task_columns(self.task_names, names)
        return ArrayDataset(
            tuple(names), {k: (im, lab[:, columns]) for k, (im, lab) in self.splits.items()}
        )


def task_columns(available: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Positions of `wanted` task names in `available`;
    UserError naming the valid ones otherwise."""
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise UserError(
            f"unknown task(s) {unknown} in config.tasks; valid names: {list(available)}"
        )
    if len(set(wanted)) != len(wanted):
        raise UserError(f"config.tasks lists a task twice: {list(wanted)}")
    return [list(available).index(n) for n in wanted]
