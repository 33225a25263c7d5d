import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tag_jax import losses, models


def test_celeba_trunk_has_14400_features_and_split_params():
    model = models.MultiTaskNet(num_tasks=9, width=64, conv="xla")
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3)), train=False)
    )
    params = shapes["params"]
    assert set(params) == {"shared", "heads"}
    assert set(shapes["batch_stats"]) == {"shared"}
    assert params["heads"]["kernel"].shape == (9, 14400, 2)
    assert params["heads"]["bias"].shape == (9, 2)
    features = jax.eval_shape(
        lambda: models.Trunk(width=64).init_with_output(
            jax.random.key(0), jnp.zeros((2, 64, 64, 3)), train=False
        )[0]
    )
    assert features.shape == (2, 14400)
    logits = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 64, 64, 3)), train=False)[0]
    )
    assert logits.shape == (2, 9, 2)


def test_im2col_equals_xla_convolution_values_and_gradients():
    x = jax.random.normal(jax.random.key(1), (3, 7, 7, 5))
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 5, 4))

    def out(impl, k, x):
        return models.Conv3x3(4, impl).apply({"params": {"kernel": k}}, x)

    np.testing.assert_allclose(out("im2col", kernel, x), out("xla", kernel, x), atol=1e-4)
    grads = [
        jax.grad(lambda k, x, i=impl: (out(i, k, x) ** 2).sum(), argnums=(0, 1))(kernel, x)
        for impl in ("im2col", "xla")
    ]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_heads_equal_separate_dense_layers():
    features = jax.random.normal(jax.random.key(0), (4, 6))
    heads = models.TaskHeads(num_tasks=3, num_classes=2)
    params = heads.init(jax.random.key(1), features)["params"]
    logits = heads.apply({"params": params}, features)
    for t in range(3):
        dense = nn.Dense(2).apply(
            {"params": {"kernel": params["kernel"][t], "bias": params["bias"][t]}}, features
        )
        np.testing.assert_allclose(logits[:, t], dense, rtol=1e-5, atol=1e-6)


def test_per_task_cross_entropy_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=(5, 3))
    mask = np.array([1, 1, 1, 0, 0], np.float32)
    got = losses.per_task_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, nll[:3].mean(0), rtol=1e-5)


def test_padding_rows_do_not_change_batch_statistics():
    model = models.MultiTaskNet(num_tasks=2, width=4, conv="im2col")
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    padded = jnp.concatenate([x, 100.0 * jnp.ones((2, 8, 8, 3))])
    mask = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    out_real, stats_real = model.apply(variables, x, train=True, mutable=["batch_stats"])
    out_pad, stats_pad = model.apply(
        variables, padded, train=True, mask=mask, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(out_pad[:4], out_real, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats_real), jax.tree.leaves(stats_pad)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_equals_flax_with_a_mask(train):
    """models.BatchNorm (mask-weighted statistics) against flax's nn.BatchNorm (a select mask):
    outputs, running statistics and input gradients, from perturbed non-default variables."""
    x = 3.0 * jax.random.normal(jax.random.key(0), (8, 5, 5, 4)) + 1.0
    mask = jnp.array([1, 1, 0, 1, 1, 1, 0, 1], jnp.float32)
    ours = models.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3)
    flax_bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3)
    variables = flax_bn.init(jax.random.key(1), x)
    assert jax.tree.structure(variables) == jax.tree.structure(ours.init(jax.random.key(1), x))
    variables = jax.tree.map(
        lambda a: a + jax.random.uniform(jax.random.key(2), a.shape), variables
    )

    def run(module, flax_mask):
        def out(x):
            return module.apply(
                variables, x, mask=flax_mask if train else None, mutable=["batch_stats"]
            )

        (y, stats), grad = out(x), jax.grad(lambda x: (out(x)[0] * jnp.cos(x)).sum())(x)
        return y, stats, grad

    y, stats, grad = run(ours, mask)
    y_flax, stats_flax, grad_flax = run(flax_bn, mask.astype(bool)[:, None, None, None])
    np.testing.assert_allclose(y, y_flax, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, grad_flax, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_flax)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 15, 15, 4), (2, 9, 12, 2)])
def test_max_pool_and_its_written_out_gradient_equal_flax(shape):
    x = jax.random.normal(jax.random.key(0), shape)

    def reference(v):
        return nn.max_pool(v, (3, 3), strides=(2, 2), padding="VALID")

    y, pull = jax.vjp(models.max_pool_3x3_s2, x)
    want_y, want_pull = jax.vjp(reference, x)
    np.testing.assert_array_equal(y, want_y)
    cotangent = jax.random.normal(jax.random.key(1), y.shape)
    np.testing.assert_allclose(pull(cotangent)[0], want_pull(cotangent)[0], rtol=1e-6, atol=1e-6)
    # ties (a constant window): the whole cotangent goes to one position, none is lost
    flat = jnp.zeros(shape)
    (grad,) = jax.vjp(models.max_pool_3x3_s2, flat)[1](jnp.ones(y.shape))
    assert float(grad.sum()) == y.size and float(grad.max()) >= 1.0


def test_max_pool_forward_mode_equals_flax():
    x = jax.random.normal(jax.random.key(2), (2, 9, 9, 3))
    tangent = jax.random.normal(jax.random.key(3), x.shape)
    _, got = jax.jvp(models.max_pool_3x3_s2, (x,), (tangent,))
    _, want = jax.jvp(
        lambda v: nn.max_pool(v, (3, 3), strides=(2, 2), padding="VALID"), (x,), (tangent,)
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_threaded_xla_convolution_compiles_the_same_values():
    """'xla_threaded' is XLA's convolution compiled without the CPU's single-threaded library
    kernel: same parameters, same outputs and gradients as 'xla' (to float rounding)."""
    x = jax.random.normal(jax.random.key(0), (4, 9, 9, 3))
    nets = {
        impl: models.MultiTaskNet(num_tasks=2, width=8, conv=impl)
        for impl in ("xla", "xla_threaded")
    }
    variables = nets["xla"].init(jax.random.key(1), x, train=False)

    def loss(impl):
        def fn(params):
            logits, _ = nets[impl].apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(logits**2)

        return jax.jit(jax.value_and_grad(fn), compiler_options=models.compiler_options(impl))(
            variables["params"]
        )

    (want, want_grad), (got, got_grad) = loss("xla"), loss("xla_threaded")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    if jax.default_backend() == "cpu" and models.threaded_conv_supported():
        assert models.compiler_options("xla_threaded") == models.CPU_THREADED_CONV_OPTIONS
        assert models.conv_candidates() == ("xla", "xla_threaded", "im2col")
    assert models.compiler_options("xla") is None and models.compiler_options("auto") is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_uint8_images_are_scaled_on_device_like_float_images_on_the_host(dtype):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 9, 9, 3), dtype=np.uint8)
    on_host = pixels.astype(np.float32) / 255.0  # what the host used to send
    model = models.MultiTaskNet(num_tasks=2, width=4, dtype=dtype)
    variables = model.init(jax.random.key(0), jnp.asarray(on_host), train=False)
    from_uint8 = model.apply(variables, jnp.asarray(pixels), train=False)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(
        from_uint8, model.apply(variables, jnp.asarray(on_host), train=False), **tolerance
    )
    stem = models.Stem(width=4)  # the entry of the DMTG and per-group networks
    stem_vars = stem.init(jax.random.key(1), jnp.asarray(on_host), train=False)
    np.testing.assert_allclose(
        stem.apply(stem_vars, jnp.asarray(pixels), train=False),
        stem.apply(stem_vars, jnp.asarray(on_host), train=False),
        rtol=1e-5,
        atol=1e-6,
    )
    assert float(jnp.max(from_uint8)) != 0.0


def test_batch_norm_writes_its_moments_and_normalises_a_lookahead_with_the_moved_ones():
    """Training with 'batch_moments' mutable, models.BatchNorm writes the batch's mask-weighted
    mean and mean square and every example's; given them, narrowed to some examples, it normalises
    a batch of those examples (changed) with the whole batch's moments plus the change of the
    examples' moments (written out), leaving the running statistics alone; given the whole batch
    unchanged, it normalises as the batch's own forward did."""
    x = 2.0 * jax.random.normal(jax.random.key(0), (6, 3, 3, 4)) + 0.5
    mask = jnp.array([1, 1, 1, 1, 0, 1], jnp.float32)
    bn = models.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3)
    variables = bn.init(jax.random.key(1), x)
    variables = jax.tree.map(
        lambda a: a + jax.random.uniform(jax.random.key(2), a.shape), variables
    )
    y, written = bn.apply(variables, x, mask=mask, mutable=["batch_stats", "batch_moments"])
    moments = written["batch_moments"]
    xs, real = np.asarray(x, np.float64), np.asarray(mask) == 1
    np.testing.assert_allclose(moments["mean"], xs[real].mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(moments["mean_square"], (xs[real] ** 2).mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(moments["example_mean"], xs.mean((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moments["example_mean_square"], (xs**2).mean((1, 2)), rtol=1e-5)
    params = variables["params"]

    def normalised(values, mean, mean_square):
        return (values - mean) / np.sqrt(mean_square - mean**2 + 1e-3) * np.asarray(
            params["scale"]
        ) + np.asarray(params["bias"])

    same = bn.apply({**variables, "batch_moments": moments}, x, mask=mask)
    np.testing.assert_allclose(same, y, rtol=1e-4, atol=1e-5)
    rows = np.arange(0, 6, 2)  # examples 0, 2, 4 (4 padded)
    narrowed = {
        **moments,
        "example_mean": moments["example_mean"][rows],
        "example_mean_square": moments["example_mean_square"][rows],
    }
    changed = 1.1 * xs[rows] + 0.3
    out, unchanged = bn.apply(
        {**variables, "batch_moments": narrowed},
        jnp.asarray(changed),
        mask=mask[rows],
        mutable=["batch_stats"],
    )
    kept = real[rows]
    mean = xs[real].mean((0, 1, 2)) + changed[kept].mean((0, 1, 2)) - xs[rows][kept].mean((0, 1, 2))
    mean_square = (
        (xs[real] ** 2).mean((0, 1, 2))
        + (changed[kept] ** 2).mean((0, 1, 2))
        - (xs[rows][kept] ** 2).mean((0, 1, 2))
    )
    np.testing.assert_allclose(out, normalised(changed, mean, mean_square), rtol=1e-4, atol=1e-5)
    for a, b in zip(
        jax.tree.leaves(unchanged["batch_stats"]), jax.tree.leaves(variables["batch_stats"])
    ):
        np.testing.assert_array_equal(a, b)
