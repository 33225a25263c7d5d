"""Datasets: `load_dataset(config)` returns a `Dataset` restricted to `config.tasks`."""

from tag_jax.data.base import ArrayDataset, Dataset, task_columns
from tag_jax.errors import UserError

__all__ = ["ArrayDataset", "DATASETS", "Dataset", "load_dataset", "task_columns"]
DATASETS = ("synthetic", "npz", "digits", "celeb_a")


def load_dataset(config) -> Dataset:
    name = config.dataset.name
    if name == "synthetic":
        from tag_jax.data import synthetic

        dataset = synthetic.load(config)
    elif name == "npz":
        from tag_jax.data import npz

        dataset = npz.load(config.dataset.path, config.model.num_classes)
    elif name == "digits":
        from tag_jax.data import digits

        dataset = digits.load(config)
    elif name == "celeb_a":
        from tag_jax.data import celeba

        return celeba.load(config)
    else:
        raise UserError(f"unknown config.dataset.name {name!r}; choose one of {DATASETS}")
    if config.tasks:
        dataset = dataset.select_tasks(tuple(config.tasks))
    return dataset
