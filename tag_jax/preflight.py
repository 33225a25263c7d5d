"""Memory a run needs, estimated from shapes before anything is allocated or written.

Two checks, both before the workdir is touched: `check_dataset_memory(config)` before the data
is read (the images it will hold, from the config or an .npz file's headers), and
`check_run_memory(config, dataset)` once it is (a training and an evaluation batch, parameters
with their copies, and activations). Each need is compared with
what the machine has free (tag_jax.step_timing.free_memory_bytes: MemAvailable for the host; a
GPU's or TPU's free memory for device needs, which on CPU are host needs too). A run that cannot
fit is one line naming its largest need and the setting that lowers it.

The numbers are lower bounds, not forecasts: only what must exist at once is counted (one copy
of the images, one batch, one network's parameters, one feature map of the stem and its
gradient per example), never what a method adds (TAG's lookahead, several networks), so a run
that passes can still run out of memory, but one that is refused cannot fit.
"""

import dataclasses
import math

import jax

from tag_jax import step_timing
from tag_jax.errors import UserError

FLOAT32 = 4
DIGITS_EXAMPLES = 1797  # scikit-learn's digits (tag_jax.data.digits)
OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2}  # per-parameter optimizer state (sgd: momentum)


@dataclasses.dataclass(frozen=True)
class Need:
    """`bytes` that `what` takes at least, in host or device memory; `lower` names the setting(s)
    that make it smaller."""

    what: str
    bytes: int
    lower: str
    device: bool = False


def readable(num_bytes: float) -> str:
    """'1,234.5 GiB' from 1 GiB on, else '12.3 MiB'."""
    if num_bytes >= 2**30:
        return f"{num_bytes / 2**30:,.1f} GiB"
    return f"{num_bytes / 2**20:,.1f} MiB"


def dataset_needs(config) -> list:
    """The images the dataset holds in host memory once read, and what reading them takes."""
    ds, size = config.dataset, config.image_size
    if ds.name == "synthetic":
        sizes = (ds.num_train, ds.num_validation, ds.num_test)
        groups = len(ds.group_sizes)
        stored = sum(sizes) * size * size * 3 * FLOAT32
        # generate() holds float64 waves (N, S, S, G) and images (N, S, S, 3) of one split
        working = max(sizes) * size * size * (groups + 3) * 8
        return [
            Need(
                f"the synthetic dataset's {sum(sizes)} images of {size}x{size}x3 float32 and the "
                "float64 arrays they are generated in",
                stored + working,
                "config.image_size or config.dataset.num_train",
            )
        ]
    if ds.name == "digits":
        return [
            Need(
                f"the digits dataset's {DIGITS_EXAMPLES} images of {size}x{size} float32",
                DIGITS_EXAMPLES * size * size * FLOAT32,
                "config.image_size",
            )
        ]
    if ds.name == "npz":
        from tag_jax.data import npz  # pylint: disable=g-import-not-at-top

        images = npz.array_bytes(ds.path).get("images", 0)
        return [  # the file's array, then its splits' copies
            Need(
                f"{ds.path}'s images, read and split ({readable(images)} on disk, held twice)",
                2 * images,
                "the .npz file: fewer or smaller images, or uint8 instead of float",
            )
        ]
    return []  # celeb_a: read from its files batch by batch


def stem_side(image_side: int) -> int:
    """Side of the stem's output, the residual block's input: maxpool(3, s2) of the image."""
    return (image_side - 3) // 2 + 1


def parameter_count(num_tasks: int, image_shape, width: int, num_classes: int) -> int:
    """Parameters of one tag_jax.models.MultiTaskNet: three 3x3 convolutions and their batch
    norms (scale, bias), and the task heads on the flattened avgpool(2) of the residual block."""
    side, _, channels = image_shape
    pooled = stem_side(side) // 2
    features = pooled * pooled * width
    trunk = 9 * channels * width + 2 * 9 * width * width + 3 * 2 * width
    return trunk + num_tasks * (features * num_classes + num_classes)


def run_needs(config, num_tasks: int, image_shape, image_itemsize: int) -> list:
    """The batches on the host, and per device the network's parameters (with the best ones kept,
    their gradient and the optimizer's state) and the activations of a training step."""
    side = image_shape[0]
    pixels = math.prod(image_shape)
    width = config.model.width
    compute = 2 if config.dtype == "bfloat16" else FLOAT32
    params = parameter_count(num_tasks, image_shape, width, config.model.num_classes)
    copies = 3 + OPTIMIZER_SLOTS.get(config.optimizer.name, 1)  # params, best, gradient, slots
    per_device = step_timing.per_device_batch(config)
    return [
        Need(
            f"a training batch of {config.batch_size} images ({'x'.join(map(str, image_shape))})",
            config.batch_size * pixels * image_itemsize,
            "config.batch_size",
        ),
        Need(
            f"an evaluation batch of {config.eval_batch_size} images",
            config.eval_batch_size * pixels * image_itemsize,
            "config.eval_batch_size",
        ),
        Need(
            f"{params:,} parameters of width {width} with their best copy, gradient and "
            "optimizer state",
            params * copies * FLOAT32,
            "config.model.width (or config.image_size: the task heads read every pooled pixel)",
            device=True,
        ),
        Need(
            f"the first convolution's {side}x{side}x{width} output and its gradient for each of "
            f"the {per_device} training examples per device",
            2 * per_device * side * side * width * compute,
            "config.batch_size (or config.image_size, config.model.width)",
            device=True,
        ),
    ]


def check_fits(needs: list) -> None:
    """UserError when the needs of host or device memory exceed what is free; device needs count
    against host memory on a CPU backend."""
    device = jax.devices()[0]
    on_host = device.platform == "cpu"
    free = {
        "host": step_timing.free_memory_bytes(jax.devices("cpu")[0]),
        "device": step_timing.free_memory_bytes(device),
    }
    for memory in ("host", "device"):
        mine = [n for n in needs if (n.device and not on_host) == (memory == "device")]
        total = sum(n.bytes for n in mine)
        if not mine or free[memory] is None or total <= free[memory]:
            continue
        largest = max(mine, key=lambda n: n.bytes)
        where = "host memory" if memory == "host" else f"memory on {device.device_kind}"
        raise UserError(
            f"this run needs at least {readable(total)} of {where}, {readable(free[memory])} "
            f"free (the largest need: {largest.what}, {readable(largest.bytes)}); lower "
            f"{largest.lower}"
        )


def check_dataset_memory(config) -> None:
    """UserError when the dataset's images cannot fit in host memory (before they are read)."""
    check_fits(dataset_needs(config))


def image_itemsize(dataset) -> int:
    """Bytes per pixel value of the dataset's batches: its training images' (in memory), else
    uint8 (read from files batch by batch)."""
    splits = getattr(dataset, "splits", None)
    return splits["train"][0].dtype.itemsize if splits else 1


def check_run_memory(config, dataset) -> None:
    """UserError when batches, parameters and activations cannot fit (once the data is read)."""
    check_fits(
        run_needs(config, len(dataset.task_names), dataset.image_shape, image_itemsize(dataset))
    )
