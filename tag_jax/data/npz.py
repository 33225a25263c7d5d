"""Bring your own data: one .npz file with images, labels, task names and an optional split.

Keys: `images` (N, H, W, C) uint8 (0..255) or float; `labels` (N, T) integer
classes >= 0; `task_names` (T,) strings; optional `split` (N,) with 0 = train,
1 = validation, 2 = test. Without `split`, a fixed permutation (seed 0) puts
80% / 10% / 10% of the examples in train / validation / test.
"""

import zipfile

import numpy as np

from tag_jax.data.base import ArrayDataset
from tag_jax.errors import UserError

_FIX = "see the README section 'Bring your own data'"


def _fail(path, message):
    raise UserError(f"{path}: {message} ({_FIX})")


def default_split(num_examples: int) -> np.ndarray:
    """0/1/2 split ids: 80/10/10 of a fixed permutation."""
    order = np.random.default_rng(0).permutation(num_examples)
    split = np.zeros(num_examples, np.int64)
    num_train, num_val = int(0.8 * num_examples), int(0.1 * num_examples)
    split[order[num_train : num_train + num_val]] = 1
    split[order[num_train + num_val :]] = 2
    return split


def read_arrays(path: str) -> dict:
    """{name: array} of an .npz file (pickled arrays refused); UserError for anything else."""
    if not path:
        raise UserError(
            f"config.dataset.name='npz' needs config.dataset.path, your .npz file ({_FIX})"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            _fail(
                path,
                "a single array (.npy), not an .npz file of named arrays; save it with "
                "np.savez(path, images=..., labels=..., task_names=...)",
            )
        with loaded as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        _fail(path, "file not found; set config.dataset.path to your .npz file")
    except IsADirectoryError:
        _fail(path, "a folder, not an .npz file; set config.dataset.path to your .npz file")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        _fail(
            path, f"not a readable .npz file ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
        )


def load(path: str, num_classes: int) -> ArrayDataset:
    arrays = read_arrays(path)
    for key in ("images", "labels", "task_names"):
        if key not in arrays:
            _fail(path, f"missing array {key!r}; found {sorted(arrays)}")
    images, labels, names = arrays["images"], arrays["labels"], arrays["task_names"]
    if images.ndim != 4:
        _fail(path, f"images must be (N, H, W, C), got shape {images.shape}")
    if not len(images):
        _fail(path, "images holds no examples (N = 0)")
    if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
        _fail(path, f"images must be uint8 or float, got {images.dtype}")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        _fail(path, "images contain NaN or infinite values")
    if labels.ndim != 2 or len(labels) != len(images):
        _fail(path, f"labels must be (N, T) with N = {len(images)}, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        _fail(path, f"labels must be integer classes, got {labels.dtype}")
    if not labels.shape[1]:
        _fail(path, "labels has no tasks (T = 0 columns)")
    if labels.min() < 0 or labels.max() >= num_classes:
        _fail(
            path,
            f"labels must be in [0, {num_classes}) (config.model.num_classes), "
            f"got [{labels.min()}, {labels.max()}]",
        )
    if names.ndim != 1 or len(names) != labels.shape[1] or names.dtype.kind not in "US":
        _fail(
            path, f"task_names must be {labels.shape[1]} strings, got {names.dtype} {names.shape}"
        )
    repeated = sorted({str(n) for n in names if (names == n).sum() > 1})
    if repeated:
        _fail(path, f"task_names must be distinct; {repeated} appear more than once")
    if not all(str(n) for n in names):
        _fail(path, "task_names must be non-empty strings")
    split = arrays.get("split")
    if split is None:
        split = default_split(len(images))
    elif split.shape != (len(images),) or not np.isin(split, (0, 1, 2)).all():
        _fail(path, "split must be (N,) with values 0 (train), 1 (validation), 2 (test)")
    splits = {
        name: (images[split == i], labels[split == i])
        for i, name in enumerate(("train", "validation", "test"))
    }
    for name, (_, lab) in splits.items():
        if not len(lab):
            _fail(path, f"the {name} split is empty")
    single = [
        f"{n!s} (only class {lab[0]})"
        for n, lab in zip(names, splits["train"][1].T)
        if (lab == lab[0]).all()
    ]
    if single:
        _fail(
            path,
            f"task(s) {', '.join(single)} have a single class in the train split: there is "
            "nothing to learn; drop them from task_names/labels or give examples of another class",
        )
    return ArrayDataset(tuple(str(n) for n in names), splits)
