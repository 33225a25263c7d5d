"""Bring your own data: one .npz file with images, labels, task names and an optional split.

Keys: `images` (N, H, W, C), square (H = W); `labels` (N, T) integer classes >= 0;
`task_names` (T,) strings (str, or UTF-8 bytes, decoded); optional `split` (N,) with
0 = train, 1 = validation, 2 = test. Without `split`, a fixed permutation (seed 0) puts
80% / 10% / 10% of the examples in train / validation / test.

Pixel values: integers in [0, 255] (uint8, or another integer type holding only such values,
stored as uint8) are scaled to [0, 1] on the device; floats in [0, 1] are used as they are.
Floats above 1 but within [0, 255] are read as 0-255 values and divided by 255, with a warning
that says so; any other values (negative, above 255, NaN) are refused.
"""

import zipfile

import numpy as np
from absl import logging

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


def array_bytes(path: str) -> dict:
    """{name: bytes} of the arrays of an .npz file, from their headers (nothing loaded); {} when
    the file cannot be read that way (`load` then says why)."""
    sizes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as f:
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if np.lib.format.read_magic(f) == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(f)
                sizes[member.removesuffix(".npy")] = int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return {}
    return sizes


def pixels(path: str, images: np.ndarray) -> np.ndarray:
    """images (N, H, W, C) as uint8 (0..255) or float in [0, 1] (module docstring); UserError for
    values outside the documented ranges, a warning when float 0-255 values are divided by 255."""
    if images.dtype == np.uint8 or not images.size:  # no pixels: the shape check says why
        return images
    if np.issubdtype(images.dtype, np.integer):
        low, high = images.min(), images.max()
        if low < 0 or high > 255:
            _fail(path, f"images are integers in [{low}, {high}]; pixel values must be in [0, 255]")
        return images.astype(np.uint8)
    if not np.issubdtype(images.dtype, np.floating):
        _fail(path, f"images must be integers in [0, 255] or floats in [0, 1], got {images.dtype}")
    if not np.isfinite(images).all():
        _fail(path, "images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        _fail(
            path,
            f"images are floats in [{low:.4g}, {high:.4g}], outside the documented ranges "
            "(floats in [0, 1], or 0-255 pixel values); rescale them into [0, 1] (e.g. with "
            "np.clip for a small overshoot) or save uint8",
        )
    if high <= 1:
        return images
    logging.warning(
        "%s: images are floats in [%.4g, %.4g], not in [0, 1]: read as 0-255 pixel values and "
        "divided by 255 (save floats in [0, 1], or uint8, to silence this).",
        path,
        low,
        high,
    )
    return (images / np.float32(255)).astype(np.float32)


def task_names(path: str, names: np.ndarray, num_tasks: int) -> tuple[str, ...]:
    """The (T,) names as distinct non-empty str (UTF-8 bytes decoded); UserError otherwise."""
    if names.ndim != 1 or len(names) != num_tasks or names.dtype.kind not in "US":
        _fail(path, f"task_names must be {num_tasks} strings, got {names.dtype} {names.shape}")
    try:
        decoded = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError as e:
        _fail(path, f"task_names holds bytes that are not UTF-8 text ({e.reason}); save str names")
    repeated = sorted({n for n in decoded if decoded.count(n) > 1})
    if repeated:
        _fail(path, f"task_names must be distinct; {repeated} appear more than once")
    if not all(n.strip() for n in decoded):
        _fail(path, "task_names must be non-empty strings")
    return decoded


def load(path: str, num_classes: int) -> ArrayDataset:
    arrays = read_arrays(path)
    for key in ("images", "labels", "task_names"):
        if key not in arrays:
            _fail(path, f"missing array {key!r}; found {sorted(arrays)}")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 4:
        _fail(path, f"images must be (N, H, W, C), got shape {images.shape}")
    if not len(images):
        _fail(path, "images holds no examples (N = 0)")
    if images.shape[1] != images.shape[2]:
        _fail(
            path,
            f"images must be square (H = W), got {images.shape[1]}x{images.shape[2]} (shape "
            f"{images.shape}); crop or resize them to a square",
        )
    images = pixels(path, images)
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
    names = task_names(path, arrays["task_names"], labels.shape[1])
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
        f"{n} (only class {lab[0]})"
        for n, lab in zip(names, splits["train"][1].T)
        if (lab == lab[0]).all()
    ]
    if single:
        _fail(
            path,
            f"task(s) {', '.join(single)} have a single class in the train split: there is "
            "nothing to learn; drop them from task_names/labels or give examples of another class",
        )
    return ArrayDataset(names, splits)
