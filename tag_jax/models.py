"""The CelebA multi-task network of TAG and DMTG: a small residual trunk and one head per task.

Parameters split into two subtrees, `shared` (the trunk) and `heads` (all task
heads, stacked on a leading task axis), because every grouping method moves the
trunk and the heads differently.
"""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tag_jax.errors import UserError

CONV_IMPLS = ("xla", "xla_threaded", "im2col", "auto")
# 'xla_threaded': XLA's convolution with the CPU compiler told not to hand convolutions to the
# YNNPACK library (on by default in jaxlib 0.10 on CPU, where it runs each convolution on ONE
# core): XLA's own kernels then use every core. Other YNNPACK fusions (dots, reductions) stay.
# The value lists the library fusion types kept
# (XLA DebugOptions.xla_cpu_experimental_ynn_fusion_type).
CPU_THREADED_CONV_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    )
}
# Smallest image side the trunk takes: maxpool(3, s2) leaves (S - 3) // 2 + 1 >= 2 for avgpool(2).
MIN_IMAGE_SIZE = 5


def check_image_shape(image_shape) -> None:
    """UserError unless images (H, W, C) have H, W >= MIN_IMAGE_SIZE and C >= 1."""
    height, width, channels = image_shape
    if min(height, width) < MIN_IMAGE_SIZE or channels < 1:
        raise UserError(
            f"images are {height}x{width} with {channels} channel(s); the trunk needs at "
            f"least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels and 1 channel (set "
            "config.image_size, or give larger images)"
        )


def resolve_conv_impl(name: str) -> str:
    """The rule for an 'auto' that was not timed (tag_jax.autotune decides it by timing): 'xla'.

    im2col (one matmul per convolution) was the faster one on CPUs whose XLA filter gradient is
    slow, while XLA's max-pool gradient hid the difference; since the written-out max-pool
    gradient, XLA's own convolution is faster on the CPUs measured (benchmarks/README.md), and on
    GPU/TPU.
    """
    if name not in CONV_IMPLS:
        raise ValueError(f"model.conv must be one of {CONV_IMPLS}, got {name!r}")
    return "xla" if name == "auto" else name


@functools.cache
def threaded_conv_supported() -> bool:
    """Whether this jaxlib's CPU compiler takes CPU_THREADED_CONV_OPTIONS (False elsewhere)."""
    if jax.default_backend() != "cpu":
        return False
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_THREADED_CONV_OPTIONS)(jnp.zeros(()))
        return True
    except Exception:  # pylint: disable=broad-except (an older or newer XLA without the option)
        return False


def compiler_options(conv: str) -> Optional[dict]:
    """The compiler options a step built with model.conv = `conv` is jitted with: for
    'xla_threaded' on a CPU whose compiler takes them, CPU_THREADED_CONV_OPTIONS; else None
    ('xla_threaded' is then 'xla')."""
    return (
        dict(CPU_THREADED_CONV_OPTIONS)
        if (conv == "xla_threaded" and threaded_conv_supported())
        else None
    )


def conv_candidates() -> tuple:
    """model.conv values tag_jax.autotune times: 'xla_threaded' only where it differs from 'xla'."""
    return ("xla", "xla_threaded", "im2col") if threaded_conv_supported() else ("xla", "im2col")


def im2col_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME 3x3 stride-1 convolution as one matmul. x: (B, H, W, C);
    kernel: (3, 3, C, F) -> (B, H, W, F)."""
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # Channel order (dy, dx, c) matches kernel.reshape(9 * C, F).
    patches = jnp.concatenate(
        [padded[:, dy : dy + height, dx : dx + width, :] for dy in range(3) for dx in range(3)],
        axis=-1,
    )
    return patches @ kernel.reshape(-1, kernel.shape[-1]).astype(x.dtype)


class Conv3x3(nn.Module):
    """3x3 SAME convolution without bias; `impl` picks XLA's conv ('xla', 'xla_threaded': the
    same program, compiled differently, see compiler_options) or im2col (same parameters, same
    values)."""

    features: int
    impl: str = "xla"
    kernel_init: Callable[..., Any] = nn.initializers.glorot_uniform()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
        if self.impl == "im2col":
            return im2col_conv3x3(x, kernel)
        return jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )


class Trunk(nn.Module):
    """conv-BN-ReLU-maxpool(3, s2) -> residual block -> ReLU -> avgpool(2, s2) -> flatten.

    (B, S, S, C) -> (B, F); for S = 64 and width 64, F = 15 * 15 * 64 = 14,400.
    `mask` (B,) marks real examples: padded ones do not enter batch statistics.
    """

    width: int = 64
    conv: str = "xla"
    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        norm = masked_batch_norm(train, mask, self.bn_epsilon, self.bn_momentum)
        return residual_tail_layers(
            stem_layers(x, self.width, self.conv, norm), self.width, self.conv, norm
        )


class TaskHeads(nn.Module):
    """One Dense(num_classes) head per task, stacked: (B, F) -> logits (B, T, num_classes)."""

    num_tasks: int
    num_classes: int = 2

    @nn.compact
    def __call__(self, features):
        kernel = self.param(
            "kernel",
            nn.initializers.glorot_uniform(batch_axis=(0,)),
            (self.num_tasks, features.shape[-1], self.num_classes),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.num_tasks, self.num_classes))
        return jnp.einsum("bf,tfc->btc", features, kernel.astype(features.dtype)) + bias


class MultiTaskNet(nn.Module):
    """Trunk (`shared`) + stacked task heads (`heads`).
    image (B, S, S, C) -> logits (B, T, classes)."""

    num_tasks: int
    num_classes: int = 2
    width: int = 64
    conv: str = "xla"
    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.99
    dtype: str = "float32"  # compute dtype; parameters and losses stay float32

    def setup(self):
        self.shared = Trunk(self.width, self.conv, self.bn_epsilon, self.bn_momentum)
        self.heads = TaskHeads(self.num_tasks, self.num_classes)

    def __call__(self, image, *, train: bool, mask=None):
        return self.heads(self.shared(pixels_as_float(image, self.dtype), train=train, mask=mask))


def create_model(config, num_tasks: int) -> MultiTaskNet:
    return MultiTaskNet(
        num_tasks=num_tasks,
        num_classes=config.model.num_classes,
        width=config.model.width,
        conv=resolve_conv_impl(config.model.conv),
        bn_epsilon=config.model.bn_epsilon,
        bn_momentum=config.model.bn_momentum,
        dtype=config.dtype,
    )


# Trunk = stem -> residual tail. The layer functions below create their modules inside the
# calling module's compact scope, so Trunk keeps its flat parameter names (Conv3x3_0..2,
# BatchNorm_0..2) while Stem and ResidualTail hold the same layers split in two.


def masked_batch_norm(train: bool, mask, epsilon: float, momentum: float) -> Callable:
    """norm(y): a new BatchNorm in the calling module; training statistics over real rows
    (mask (B,)).

    Statistics are computed in float32; the output keeps y's dtype (bfloat16 compute stays
    bfloat16).
    """
    bn_mask = mask if train else None

    def norm(y):
        return BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon)(
            y, mask=bn_mask
        ).astype(y.dtype)

    return norm


def batch_moments(x: jax.Array, mask=None):
    """(mean, mean of squares) (C,) of x (B, ..., C) over every axis but the last, counting only
    the examples where mask (B,) is nonzero (all without a mask). Mask-weighted sums (a
    contraction with the mask), not a select: XLA:CPU writes out a selected copy of x before
    reducing it, 15x slower at 32x32x64, batch 32 (benchmarks/README.md)."""
    if mask is None:
        return x.mean(axis=tuple(range(x.ndim - 1))), (x * x).mean(axis=tuple(range(x.ndim - 1)))
    weights = (mask != 0).astype(x.dtype)
    count = weights.sum() * (x.size // (x.shape[0] * x.shape[-1]))

    def weighted_sum(values):  # full float32 on every backend (TPU/GPU dots may round inputs)
        return jnp.einsum("b...c,b->c", values, weights, precision=jax.lax.Precision.HIGHEST)

    return weighted_sum(x) / count, weighted_sum(x * x) / count


class BatchNorm(nn.Module):
    """flax's nn.BatchNorm over (B, ..., C) with its parameters, statistics and values (fast
    variance E[x^2] - E[x]^2 clipped at 0, float32 statistics, running averages kept while
    training), whose batch statistics count the examples marked by `mask` (B,) (batch_moments).

    Moments for a lookahead (tag_jax.methods.dmtg): training with the 'batch_moments' collection
    mutable, it writes there the batch's 'mean' and 'mean_square' (C,) and every example's
    'example_mean' and 'example_mean_square' (B, C). Given them instead (the example rows
    narrowed to this batch's examples), it normalises with the given batch's moments moved by
    how much this batch's moments differ from the given examples' (the whole batch after a step,
    estimated from some of its examples; all of them: this batch's own moments) and leaves the
    running averages alone.
    """

    use_running_average: bool
    momentum: float = 0.99
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, mask=None):
        features = (x.shape[-1],)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            x32 = x.astype(jnp.float32)
            mean, mean_square = batch_moments(x32, mask)
            given = self.has_variable("batch_moments", "mean")
            if given:
                moment = functools.partial(self.get_variable, "batch_moments")
                # the given examples' moments (B, C) -> (C,), counted as batch_moments counts rows
                then_mean = batch_moments(moment("example_mean"), mask)[0]
                then_square = batch_moments(moment("example_mean_square"), mask)[0]
                mean = moment("mean") + (mean - then_mean)
                mean_square = moment("mean_square") + (mean_square - then_square)
            var = jnp.maximum(0.0, mean_square - jnp.square(mean))
            if not (self.is_initializing() or given):
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
                if self.is_mutable_collection(
                    "batch_moments"
                ):  # (a second pass over x: the batch's moments above keep
                    # the values every BatchNorm computes without this collection)
                    example_mean, example_square = example_moments(x32)
                    for name, value in (
                        ("mean", mean),
                        ("mean_square", mean_square),
                        ("example_mean", example_mean),
                        ("example_mean_square", example_square),
                    ):
                        self.put_variable("batch_moments", name, value)
        return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias


def example_moments(x: jax.Array):
    """(mean, mean of squares) (B, C) of every example of x (B, ..., C)."""
    axes = tuple(range(1, x.ndim - 1))
    return x.mean(axis=axes), (x * x).mean(axis=axes)


@jax.custom_jvp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3x3 max-pool, stride 2, VALID: (B, H, W, C) -> (B, (H - 3) // 2 + 1, (W - 3) // 2 + 1, C).

    Same values as nn.max_pool, computed as the maximum of the 9 strided window views: XLA:CPU's
    reduce_window took 2.4 ms where the views take 0.18 (32x32x64, batch 32). Its derivative is
    written out (below) because XLA:CPU's own gradient (select_and_scatter) took half of a plain
    training step on a 2-core CPU (docs/performance.md).
    """
    out_h, out_w = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    return functools.reduce(jnp.maximum, _window_views(x, out_h, out_w))


def _window_views(x, out_h: int, out_w: int):
    """The 9 strided views x[:, dy::2, dx::2] (B, out_h, out_w, C), in window order (dy, dx)."""
    return [
        jax.lax.slice(
            x,
            (0, dy, dx, 0),
            (x.shape[0], dy + 2 * out_h - 1, dx + 2 * out_w - 1, x.shape[3]),
            (1, 2, 2, 1),
        )
        for dy in range(3)
        for dx in range(3)
    ]


@max_pool_3x3_s2.defjvp
def _max_pool_jvp(primals, tangents):
    """Each output's tangent is the input tangent at the first window position (in window order)
    that holds the maximum. Linear in the tangent, so reverse mode transposes it: the cotangent
    goes back through the strided slices as interior padding, no select_and_scatter."""
    (x,), (tangent,) = primals, tangents
    y = max_pool_3x3_s2(x)
    out_h, out_w = y.shape[1:3]
    taken = jnp.zeros(y.shape, bool)
    out = jnp.zeros(y.shape, tangent.dtype)
    for view, tangent_view in zip(
        _window_views(x, out_h, out_w), _window_views(tangent, out_h, out_w)
    ):
        first = (view == y) & ~taken
        taken = taken | first
        out = out + jnp.where(first, tangent_view, 0)
    return y, out


def pixels_as_float(image, dtype=None):
    """uint8 images (0-255, as uint8 batches reach the device) scaled to [0, 1] in float32 (XLA
    may round x / 255 one float32 ulp off numpy's); then cast to `dtype` (None: float images keep
    theirs)."""
    if image.dtype == jnp.uint8:
        image = image.astype(jnp.float32) / 255.0
    return image if dtype is None else image.astype(dtype)


def stem_layers(x, width: int, conv: str, norm: Callable):
    """conv-BN-ReLU-maxpool(3, s2): (B, S, S, C) -> (B, S', S', width), S' = (S - 3) // 2 + 1;
    uint8 images are scaled to [0, 1] first (pixels_as_float)."""
    x = nn.relu(norm(Conv3x3(width, conv)(pixels_as_float(x))))
    return max_pool_3x3_s2(x)


def residual_tail_layers(x, width: int, conv: str, norm: Callable):
    """residual block -> ReLU -> avgpool(2, s2) -> flatten: (B, S', S', width) -> (B, F)."""
    residual = x
    x = nn.relu(norm(Conv3x3(width, conv)(x)))
    x = norm(Conv3x3(width, conv)(x))
    x = nn.relu(x + residual)
    x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    return x.reshape(x.shape[0], -1)


class Stem(Trunk):
    """Trunk's first part (same fields): conv-BN-ReLU-maxpool,
    (B, S, S, C) -> (B, S', S', width)."""

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        norm = masked_batch_norm(train, mask, self.bn_epsilon, self.bn_momentum)
        return stem_layers(x, self.width, self.conv, norm)


class ResidualTail(Trunk):
    """The rest of Trunk (same fields): Stem output (B, S', S', width) -> features (B, F)."""

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        norm = masked_batch_norm(train, mask, self.bn_epsilon, self.bn_momentum)
        return residual_tail_layers(x, self.width, self.conv, norm)
