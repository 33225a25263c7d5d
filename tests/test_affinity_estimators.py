"""TAG's cheaper affinity estimators against closed forms, explicit Jacobians and the exact one."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config
from helpers import mlp_problem, trunk_problem

from tag_jax import affinity, affinity_estimators, methods, steps, train
from tag_jax.data import synthetic
from tag_jax.errors import UserError

pytestmark = pytest.mark.usefixtures("highest_precision")


def least_squares_problem(num_tasks=3, dim=4, rows=5):
    """L_t(theta) = |X_t theta - y_t|^2 / (2 rows):
    gradient X_t^T r_t / rows, Hessian X_t^T X_t / rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_tasks, rows, dim))
    y = rng.normal(size=(num_tasks, rows))
    theta = rng.normal(size=dim)

    def losses_fn(p, batch):
        del batch
        residual = jnp.einsum("trd,d->tr", jnp.asarray(x, jnp.float32), p["theta"]) - y
        return (residual**2).sum(1) / (2 * rows)

    grads = np.einsum("trd,tr->td", x, np.einsum("trd,d->tr", x, theta) - y) / rows
    hessians = np.einsum("trd,tre->tde", x, x) / rows
    losses = ((np.einsum("trd,d->tr", x, theta) - y) ** 2).sum(1) / (2 * rows)
    return losses_fn, {"theta": jnp.asarray(theta, jnp.float32)}, grads, hessians, losses


KW = dict(momentum=0.7, weight_decay=0.05, sources=[(0,), (1,), (2,), (0, 2)])


def test_first_order_equals_closed_form_on_least_squares():
    losses_fn, params, grads, _, losses = least_squares_problem()
    trace = {"theta": jnp.array([0.3, -0.2, 0.1, 0.5])}
    delta = KW["weight_decay"] * np.asarray(params["theta"]) + KW["momentum"] * np.asarray(
        trace["theta"]
    )
    sources = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], float)
    want = (sources @ grads @ grads.T + grads @ delta) / losses  # A[s, t] / lr
    for scale_by_lr, factor in ((True, 1.0), (False, 0.01)):
        got = affinity_estimators.first_order_affinity(
            losses_fn, params, None, learning_rate=0.01, trace=trace, scale_by_lr=scale_by_lr, **KW
        )
        np.testing.assert_allclose(got, factor * want, rtol=1e-5)


def test_exact_minus_first_order_is_the_curvature_term_and_vanishes_with_the_learning_rate():
    """On a quadratic, exact/lr - first_order = -lr d_s^T H_t d_s / (2 L_t), exactly."""
    losses_fn, params, grads, hessians, losses = least_squares_problem()
    sources = np.eye(3)
    first = affinity_estimators.first_order_affinity(losses_fn, params, None, learning_rate=1.0)
    errors = []
    for lr in (1e-1, 1e-2):  # float32: 1 - L'/L loses digits below lr ~ 1e-3
        exact = affinity.lookahead_affinity(losses_fn, params, None, learning_rate=lr)
        curvature = np.einsum("sd,tde,se->st", sources @ grads, hessians, sources @ grads)
        np.testing.assert_allclose(
            exact - first, -lr * curvature / (2 * losses), rtol=1e-3, atol=2e-5
        )
        errors.append(float(np.abs(exact - first).max()))
    assert errors[0] > 9 * errors[1] > 0


def test_first_order_tends_to_exact_on_mlp_with_momentum_and_weight_decay():
    losses_fn, params, batch, trace = mlp_problem()
    kw = dict(momentum=1.0, trace=trace, weight_decay=0.05, sources=[(0,), (1, 2), (0, 1, 2, 3)])
    first = affinity_estimators.first_order_affinity(
        losses_fn, params, batch, learning_rate=1.0, **kw
    )
    errors = [
        float(
            np.abs(
                affinity.lookahead_affinity(losses_fn, params, batch, learning_rate=lr, **kw)
                - first
            ).max()
        )
        for lr in (1e-2, 1e-3, 1e-4)
    ]
    assert errors[2] < 0.2 * errors[1] < 0.04 * errors[0]
    assert errors[2] < 5e-3 * float(np.abs(first).max())


def explicit_jacobian(losses_fn, params, batch):
    """(T, P) Jacobian of the loss vector by reverse mode, leaves flattened in tree order."""
    jac = jax.jacrev(lambda p: losses_fn(p, batch))(params)
    return np.concatenate([np.asarray(j).reshape(j.shape[0], -1) for j in jax.tree.leaves(jac)], 1)


def flat_directions(directions):
    return np.concatenate(
        [np.asarray(d).reshape(d.shape[0], -1) for d in jax.tree.leaves(directions)], 1
    )


@pytest.mark.parametrize("strategy", ["unrolled", "vmap", "map"])
def test_sketched_gram_is_the_mean_outer_product_of_jacobian_projections(strategy):
    losses_fn, params, batch, trace = mlp_problem()
    directions = affinity_estimators.rademacher_directions(jax.random.key(3), params, 5)
    v = flat_directions(directions)
    assert set(np.unique(v)) == {-1.0, 1.0}
    base, gram, products = affinity_estimators.sketched_gram(
        losses_fn, params, batch, directions, direction=trace, strategy=strategy, chunk_size=2
    )
    jac = explicit_jacobian(losses_fn, params, batch)
    projections = jac @ v.T  # (T, m)
    np.testing.assert_allclose(gram, projections @ projections.T / 5, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        products,
        jac @ flat_directions(jax.tree.map(lambda t: t[None], trace))[0],
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(base, losses_fn(params, batch), rtol=1e-6)


def test_sketched_is_unbiased_for_first_order():
    """The mean of many independent sketches approaches first_order; one sketch is deterministic."""
    losses_fn, params, batch, trace = mlp_problem()
    kw = dict(learning_rate=0.1, momentum=1.0, trace=trace, weight_decay=0.05)
    first = np.asarray(affinity_estimators.first_order_affinity(losses_fn, params, batch, **kw))
    sketch = jax.jit(
        lambda key: affinity_estimators.sketched_affinity(
            losses_fn, params, batch, key=key, sketch_size=64, strategy="vmap", **kw
        )
    )
    runs = np.stack([sketch(jax.random.key(i)) for i in range(50)])  # 3,200 directions in all
    scale = np.abs(first).max()
    assert np.abs(runs.mean(0) - first).max() < 0.05 * scale
    assert np.abs(runs[0] - first).max() > np.abs(runs.mean(0) - first).max()  # noise averages out
    np.testing.assert_array_equal(sketch(jax.random.key(0)), runs[0])


@pytest.fixture(scope="module")
def trained_trunk():
    """(model, optimizer, jitted plain step, a state after one plain step, batch): shared by the
    estimators' measured-step tests."""
    model, variables, batch = trunk_problem()
    optimizer = optax.sgd(0.05, momentum=0.9)
    plain = jax.jit(steps.make_mtl_step(model, optimizer))
    state = steps.init_train_state(
        model, optimizer, jax.random.key(1), (8, 8, 3), steps.init_affinity_tracker(3, 3)
    )
    state = state.replace(
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=optimizer.init(variables["params"]),
    )
    return model, optimizer, plain, plain(state, batch)[0], batch  # a non-zero momentum trace


@pytest.mark.parametrize("estimator", ["first_order", "sketched"])
def test_measured_step_records_the_estimate_and_updates_like_plain_step(trained_trunk, estimator):
    model, optimizer, plain, state, batch = trained_trunk
    kw = dict(
        sources=affinity.sources_for_order(3, "singles"),
        lookahead="momentum",
        momentum=1.0,
        weight_decay=0.01,
        scale_by_lr=True,
    )
    losses_fn = steps.shared_losses_fn(model, state.params, state.batch_stats)
    want_kw = dict(
        learning_rate=0.05,
        momentum=1.0,
        weight_decay=0.01,
        trace=steps.momentum_trace(state.opt_state)["shared"],
    )
    if estimator == "first_order":
        measure = steps.make_first_order_measure(lambda step: 0.05, **kw)
        want = jax.jit(
            lambda p: affinity_estimators.first_order_affinity(losses_fn, p, batch, **want_kw)
        )(state.params["shared"])
    else:
        key = jax.random.key(7)
        measure = steps.make_sketched_measure(
            model, lambda step: 0.05, key=key, sketch_size=4, strategy="unrolled", **kw
        )
        want = jax.jit(
            lambda p: affinity_estimators.sketched_affinity(
                losses_fn,
                p,
                batch,
                sketch_size=4,
                key=jax.random.fold_in(key, state.step),
                **want_kw,
            )
        )(state.params["shared"])
    measured = jax.jit(
        steps.make_measured_step(
            model, optimizer, measure, strategy="unrolled", per_task=estimator != "sketched"
        )
    )
    new_state, _ = measured(state, batch)
    np.testing.assert_allclose(new_state.tracker["run_sum"], want, rtol=1e-4, atol=1e-5)
    plain_state, _ = plain(state, batch)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(plain_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "estimator, lookahead, passes",
    [
        ("exact", "sgd", 1 + 3 + 3),
        ("first_order", "sgd", 1 + 3),
        ("sketched", "sgd", 1 + 5),
        ("sketched", "momentum", 1 + 5 + 1),
    ],
)
def test_trunk_passes_per_measured_step(tiny_config, estimator, lookahead, passes):
    tiny_config.method = "tag"
    tiny_config.affinity.estimator, tiny_config.affinity.sketch_size = estimator, 5
    tiny_config.affinity.lookahead = lookahead
    methods.validate(tiny_config)
    method = methods.build(tiny_config, ["a", "b", "c"], (8, 8, 3), steps_per_epoch=3)
    assert method.trunk_passes == (1, passes)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("estimator", "fast", "unknown config.affinity.estimator 'fast'"),
        ("sketch_size", 0, r"sketch_size must be >= 1 \(an integer\), got 0"),
    ],
)
def test_bad_estimator_settings_are_user_errors(tiny_config, key, value, message):
    for method in ("tag", "cs"):
        tiny_config.method = method
        tiny_config.affinity[key] = value
        with pytest.raises(UserError, match=message):
            methods.validate(tiny_config)


@pytest.mark.parametrize("estimator", ["first_order", "sketched"])
def test_run_writes_the_estimator_into_affinity_json(tiny_config, tmp_path, estimator):
    tiny_config.method = "tag"
    tiny_config.affinity.estimator, tiny_config.affinity.sketch_size = estimator, 3
    tiny_config.selection.max_groups = (2,)
    train.train_and_evaluate(tiny_config, str(tmp_path))
    record = json.load(open(os.path.join(tmp_path, "affinity.json")))
    want = {"name": estimator, **({"sketch_size": 3} if estimator == "sketched" else {})}
    assert record["estimator"] == want
    assert np.isfinite(record["matrix"]).all() and record["steps_recorded"] == 3
    results = json.load(open(os.path.join(tmp_path, "results.json")))
    assert results["compute"]["trunk_passes_per_step"] == [
        1,
        1 + (3 if estimator == "sketched" else 4),
    ]


@pytest.mark.slow
def test_hundred_tasks_end_to_end_with_sketched_affinity_recovers_planted_groups(tmp_path):
    """configs/synthetic_many_tasks.py (100 tasks, 10 planted groups) with the sketched estimator:
    minutes on 2 CPU cores; the 10 groups selected are the planted ones."""
    config = load_config("synthetic_many_tasks")
    config.affinity.estimator = "sketched"
    config.mesh.data = 1
    train.train_and_evaluate(config, str(tmp_path))
    chosen = json.load(open(os.path.join(tmp_path, "groups.json")))["selections"][0]["groups"]
    assert sorted(map(tuple, chosen)) == sorted(synthetic.planted_groups((10,) * 10))
