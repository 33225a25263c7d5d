"""Affinity measures against naive per-source loops, a closed form, and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import mlp_problem, trunk_problem

from tag_jax import affinity, models, stacking, steps

STRATEGIES = ("unrolled", "vmap", "map")


def naive_lookahead(
    losses_fn,
    params,
    batch,
    *,
    learning_rate,
    momentum=0.0,
    trace=None,
    weight_decay=0.0,
    scale_by_lr=True,
    sources=None,
):
    """One source at a time: its own gradient, an explicit parameter copy, a fresh forward."""
    base = np.asarray(losses_fn(params, batch))
    sources = [(t,) for t in range(len(base))] if sources is None else sources
    rows = []
    for members in sources:
        grad = jax.grad(lambda p: sum(losses_fn(p, batch)[t] for t in members))(params)
        new = {}
        for name in params:
            step = grad[name] + weight_decay * params[name]
            if trace is not None:
                step = step + momentum * trace[name]
            new[name] = params[name] - learning_rate * step
        ratio = 1.0 - np.asarray(losses_fn(new, batch)) / base
        rows.append(ratio / learning_rate if scale_by_lr else ratio)
    return np.stack(rows)


VARIANTS = {
    "plain": dict(),
    "momentum_trace": dict(momentum=1.0, use_trace=True),
    "weight_decay": dict(weight_decay=0.05),
    "unscaled": dict(scale_by_lr=False),
    "multi_task_sources": dict(sources=[(0,), (1, 2), (0, 1, 2, 3)]),
}


@pytest.mark.usefixtures("highest_precision")
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lookahead_matches_naive_loop_on_mlp(variant, strategy):
    losses_fn, params, batch, trace = mlp_problem()
    kwargs = dict(VARIANTS[variant])
    if kwargs.pop("use_trace", False):
        kwargs["trace"] = trace
    want = naive_lookahead(losses_fn, params, batch, learning_rate=0.1, **kwargs)
    got = jax.jit(
        lambda p: affinity.lookahead_affinity(
            losses_fn, p, batch, learning_rate=0.1, strategy=strategy, chunk_size=2, **kwargs
        )
    )(params)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)


def test_closed_form_quadratic():
    """L_t(theta) = (theta - c_t)^2; theta' = theta - 2 lr (theta - c_s); hand-computed ratios."""
    c = jnp.array([1.0, -1.0, 2.0])
    losses_fn = lambda p, batch: (p["theta"] - c) ** 2  # noqa: E731
    got = affinity.lookahead_affinity(
        losses_fn, {"theta": jnp.array(0.0)}, None, learning_rate=0.25, scale_by_lr=False
    )
    # theta'_s = 0.5 c_s = [0.5, -0.5, 1.0]; A[s, t] = 1 - (theta'_s - c_t)^2 / c_t^2
    want = np.array([[0.75, -1.25, 0.4375], [-1.25, 0.75, -0.5625], [1.0, -3.0, 0.75]])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    scaled = affinity.lookahead_affinity(
        losses_fn, {"theta": jnp.array(0.0)}, None, learning_rate=0.25
    )
    np.testing.assert_allclose(scaled, want / 0.25, rtol=1e-6)


TRUNK_KW = dict(
    learning_rate=0.05, momentum=1.0, weight_decay=0.01, sources=affinity.sources_for_order(3, "1")
)


@pytest.fixture(scope="module")
def trunk_case():
    """The trunk problem and its naive (one source at a time) affinity, computed once (at full
    precision: module fixtures are set up before the function-scoped highest_precision)."""
    model, variables, batch = trunk_problem()
    losses_fn = steps.shared_losses_fn(model, variables["params"], variables["batch_stats"])
    shared = variables["params"]["shared"]
    trace = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), shared)
    leaves, treedef = jax.tree.flatten(shared)
    flat = lambda tree: dict(enumerate(jax.tree.leaves(tree)))  # noqa: E731
    flat_losses = jax.jit(lambda f, b: losses_fn(jax.tree.unflatten(treedef, list(f.values())), b))
    with jax.default_matmul_precision("highest"):
        want = naive_lookahead(flat_losses, flat(shared), batch, trace=flat(trace), **TRUNK_KW)
    return losses_fn, shared, trace, batch, want


@pytest.mark.usefixtures("highest_precision")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lookahead_matches_naive_loop_on_celeba_trunk(trunk_case, strategy):
    losses_fn, shared, trace, batch, want = trunk_case
    got = jax.jit(
        lambda p: affinity.lookahead_affinity(
            losses_fn, p, batch, trace=trace, strategy=strategy, **TRUNK_KW
        )
    )(shared)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.usefixtures("highest_precision")
def test_auto_strategy_with_more_sources_than_unrolled_on_cpu():
    many = stacking.UNROLL_MAX_ON_CPU + 1
    assert stacking.resolve("auto", many) == "map"
    losses_fn, params, batch, _ = mlp_problem(num_tasks=many)  # 'auto' maps over the many sources
    want = naive_lookahead(losses_fn, params, batch, learning_rate=0.1)
    got = jax.jit(lambda p: affinity.lookahead_affinity(losses_fn, p, batch, learning_rate=0.1))(
        params
    )
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)


def test_sources_for_order():
    assert affinity.sources_for_order(3, "singles") == [(0,), (1,), (2,)]
    assert affinity.sources_for_order(3, "1")[-1] == (0, 1, 2)
    assert len(affinity.sources_for_order(4, "-1")) == 15
    with pytest.raises(ValueError, match="affinity order must be one of .*got '2'"):
        affinity.sources_for_order(3, "2")


@pytest.mark.usefixtures("highest_precision")
def test_cosine_matches_numpy_and_is_symmetric_with_unit_diagonal():
    losses_fn, params, batch, _ = mlp_problem()
    got = np.asarray(affinity.gradient_cosine_similarity(losses_fn, params, batch))
    vectors = []
    for t in range(4):
        grad = jax.grad(lambda p: losses_fn(p, batch)[t])(params)
        vectors.append(np.concatenate([np.ravel(grad["w1"]), np.ravel(grad["w2"])]))  # no bias
    v = np.stack(vectors)
    want = (v @ v.T) / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, got.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(got), 1.0, rtol=1e-5)
    with_bias = affinity.gradient_cosine_similarity(losses_fn, params, batch, kernels_only=False)
    assert not np.allclose(with_bias, got)


@pytest.mark.usefixtures("highest_precision")
def test_measured_step_records_lookahead_and_updates_like_plain_step():
    model, variables, batch = trunk_problem()
    optimizer = optax.sgd(0.05, momentum=0.9)
    state = steps.init_train_state(
        model, optimizer, jax.random.key(1), (8, 8, 3), steps.init_affinity_tracker(3, 3)
    )
    state = state.replace(
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=optimizer.init(variables["params"]),
    )
    # one plain step so that the momentum trace is non-zero
    plain = jax.jit(steps.make_mtl_step(model, optimizer))
    state, _ = plain(state, batch)
    measure = steps.make_tag_measure(
        model,
        lambda step: 0.05,
        sources=affinity.sources_for_order(3, "singles"),
        lookahead="momentum",
        momentum=1.0,
        weight_decay=0.0,
        scale_by_lr=True,
        strategy="unrolled",
    )
    measured = jax.jit(steps.make_measured_step(model, optimizer, measure, strategy="unrolled"))
    new_state, _ = measured(state, batch)
    want = affinity.lookahead_affinity(
        steps.shared_losses_fn(model, state.params, state.batch_stats),
        state.params["shared"],
        batch,
        learning_rate=0.05,
        momentum=1.0,
        trace=steps.momentum_trace(state.opt_state)["shared"],
    )
    np.testing.assert_allclose(new_state.tracker["run_sum"], want, rtol=1e-4, atol=1e-5)
    assert int(new_state.tracker["run_count"]) == 1
    plain_state, _ = plain(state, batch)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(plain_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_affinities_close():
    """bfloat16 activations: finite affinities within 2% of the largest float32 entry."""
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.uniform(size=(16, 8, 8, 3)), jnp.float32),
        "labels": jnp.asarray(rng.integers(0, 2, (16, 3)), jnp.int32),
        "mask": jnp.ones(16, jnp.float32),
    }
    matrices = {}
    for dtype in ("float32", "bfloat16"):
        model = models.MultiTaskNet(num_tasks=3, width=8, conv="im2col", dtype=dtype)
        variables = model.init(jax.random.key(1), batch["image"], train=False)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
        losses_fn = steps.shared_losses_fn(model, variables["params"], variables["batch_stats"])
        assert losses_fn(variables["params"]["shared"], batch).dtype == jnp.float32
        matrices[dtype] = np.asarray(
            jax.jit(lambda p: affinity.lookahead_affinity(losses_fn, p, batch, learning_rate=0.1))(
                variables["params"]["shared"]
            )
        )
    assert np.isfinite(matrices["bfloat16"]).all()
    np.testing.assert_allclose(
        matrices["bfloat16"], matrices["float32"], atol=0.02 * np.abs(matrices["float32"]).max()
    )
