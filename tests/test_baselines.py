"""MTL baselines (uw, gradnorm, pcgrad): formulas against hand values, numpy and finite
differences; steps against per-task gradients from jacrev; tiny end-to-end runs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config

from tag_jax import data, models, steps, train, weighting
from tag_jax.methods import baselines

LOG_SIGMA_CLIP = (0.01, 10.0)


def numpy_pcgrad(grads):
    """PCGrad as a plain loop: row i projected off every original row k (i included), in order."""
    grads = np.asarray(grads, np.float64)
    projected = grads.copy()
    for i in range(len(grads)):
        for k in range(len(grads)):
            inner = projected[i] @ grads[k]
            if inner < 0:
                projected[i] -= inner / (grads[k] @ grads[k]) * grads[k]
    return projected


def numpy_renormalize(weights):
    clipped = np.clip(weights, 0.1, 10.0)
    return clipped * len(weights) / clipped.sum()


def test_pcgrad_two_conflicting_gradients_by_hand():
    # <g0, g1> = -1: g0 - (-1/2) g1 = (0.5, 0.5); g1 - (-1/1) g0 = (0, 1).
    grads = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(
        weighting.project_conflicting_gradients(grads), [[0.5, 0.5], [0.0, 1.0]], atol=1e-6
    )


def test_pcgrad_projects_the_running_gradient_in_order_off_the_original_ones():
    grads = jnp.array([[1.0, 0.0, 0.0], [-2.0, 1.0, 0.0], [0.0, -1.0, 1.0]])
    # g0: off g1 (<.,.> = -2, |g1|^2 = 5) -> (0.2, 0.4, 0); off g2 (-0.4, 2) -> (0.2, 0.2, 0.2).
    # g1: off g0 (-2, 1) -> (0, 1, 0); off g2 (-1, 2) -> (0, 0.5, 0.5).
    # g2: g0 is orthogonal (no change); off g1 (-1, 5) -> (-0.4, -0.8, 1).
    expected = [[0.2, 0.2, 0.2], [0.0, 0.5, 0.5], [-0.4, -0.8, 1.0]]
    np.testing.assert_allclose(weighting.project_conflicting_gradients(grads), expected, atol=1e-6)


def test_pcgrad_matches_a_numpy_loop_on_random_gradients():
    grads = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    np.testing.assert_allclose(
        weighting.project_conflicting_gradients(jnp.asarray(grads)),
        numpy_pcgrad(grads),
        rtol=1e-5,
        atol=1e-6,
    )


def test_pcgrad_leaves_gradients_without_conflict_unchanged():
    grads = jnp.array([[1.0, 2.0], [2.0, 1.0], [0.0, 1.0]])
    np.testing.assert_array_equal(weighting.project_conflicting_gradients(grads), grads)


def test_pcgrad_gradient_of_a_pytree_is_the_sum_of_projected_flat_rows():
    rng = np.random.default_rng(1)
    tree = {
        "a": rng.normal(size=(3, 2, 2)).astype(np.float32),
        "b": rng.normal(size=(3, 3)).astype(np.float32),
    }
    flat = np.concatenate([tree["a"].reshape(3, -1), tree["b"]], axis=1)  # ravel order: a, b
    expected = numpy_pcgrad(flat).sum(0)
    got = weighting.pcgrad_gradient(jax.tree.map(jnp.asarray, tree))
    np.testing.assert_allclose(got["a"], expected[:4].reshape(2, 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["b"], expected[4:], rtol=1e-5, atol=1e-6)


def test_uncertainty_weighted_losses_value_and_gradient():
    losses = np.array([0.7, 1.3, 2.0, 0.5], np.float32)
    log_sigma = np.array([1.0, 0.5, -1.0, 12.0], np.float32)  # the last two are clipped
    clipped = np.clip(log_sigma, *LOG_SIGMA_CLIP)
    np.testing.assert_allclose(
        weighting.uncertainty_weighted_losses(losses, log_sigma),
        losses / np.exp(2 * clipped) + clipped,
        rtol=1e-6,
    )
    grad = jax.grad(lambda s: weighting.uncertainty_weighted_losses(losses, s).sum())(log_sigma)
    inside = (log_sigma > 0.01) & (log_sigma < 10.0)
    np.testing.assert_allclose(
        grad, np.where(inside, 1.0 - 2.0 * losses * np.exp(-2 * clipped), 0.0), rtol=1e-5
    )


def test_gradnorm_loss_value_and_gradient_against_numpy_and_finite_differences():
    weights = np.array([1.0, 0.5, 2.0])
    grad_norms = np.array([0.3, 1.0, 0.2])
    losses = np.array([0.6, 0.9, 0.3])
    initial = np.array([0.7, 0.8, 0.6])
    alpha = 0.5
    norms = weights * grad_norms  # G = (0.3, 0.5, 0.4), mean 0.4
    ratios = losses / initial
    targets = norms.mean() * (ratios / ratios.mean()) ** alpha

    def numpy_loss(w):  # targets held fixed: the stop-gradient
        return np.abs(np.abs(w) * grad_norms - targets).sum()

    value, grad = jax.value_and_grad(weighting.gradnorm_loss)(
        jnp.asarray(weights, jnp.float32),
        jnp.asarray(grad_norms, jnp.float32),
        jnp.asarray(losses, jnp.float32),
        jnp.asarray(initial, jnp.float32),
        alpha,
    )
    np.testing.assert_allclose(value, numpy_loss(weights), rtol=1e-5)
    np.testing.assert_allclose(grad, np.sign(norms - targets) * grad_norms, rtol=1e-5)
    eps = 1e-6
    finite_diff = [
        (numpy_loss(weights + eps * e) - numpy_loss(weights - eps * e)) / (2 * eps)
        for e in np.eye(3)
    ]
    np.testing.assert_allclose(grad, finite_diff, rtol=1e-4)


def test_renormalize_task_weights_clips_then_rescales_to_sum_to_T():
    # clip -> (0.1, 1, 10), sum 11.1 -> times 3 / 11.1
    np.testing.assert_allclose(
        weighting.renormalize_task_weights(jnp.array([0.05, 1.0, 20.0])),
        np.array([0.1, 1.0, 10.0]) * 3 / 11.1,
        rtol=1e-6,
    )


@pytest.fixture(scope="module")
def tiny_problem():
    """The tiny config's model (4 tasks), its first two training batches, and
    reference(params, batch_stats, batch) -> numpy (losses (T,), per-task gradients by jacrev,
    leaves (T, ...)) of the model parameters {'shared', 'heads'}, compiled once for all tests."""
    config = load_config("tiny_test")
    dataset = data.load_dataset(config)
    batches = dataset.batches(
        "train", batch_size=32, seed=0, epoch=0, shuffle=False, drop_remainder=False
    )
    model = models.create_model(config, len(dataset.task_names))

    def losses_fn(params, batch_stats, batch):
        return steps.task_losses(model, params, batch_stats, batch)[0]

    jitted = jax.jit(lambda *args: (losses_fn(*args), jax.jacrev(losses_fn)(*args)))

    def reference(params, batch_stats, batch):
        model_params = {"shared": params["shared"], "heads": params["heads"]}
        return jax.tree.map(np.asarray, jitted(model_params, batch_stats, batch))

    return model, dataset.image_shape, [next(batches), next(batches)], reference


def test_gradnorm_steps_match_a_numpy_computation(tiny_problem):
    model, image_shape, batches, reference = tiny_problem
    learning_rate, alpha, num_tasks = 0.5, 0.5, 4
    optimizer = optax.sgd(learning_rate)
    state = steps.init_train_state(
        model,
        optimizer,
        jax.random.key(0),
        image_shape,
        baselines.init_gradnorm_tracker(optimizer, num_tasks),
    )
    train_step = jax.jit(
        baselines.make_gradnorm_step(model, optimizer, alpha=alpha, strategy="unrolled")
    )
    weights, initial = np.ones(num_tasks), None
    for batch in batches:  # the second step has L != L(0), so r_i and alpha matter
        losses, jac = reference(state.params, state.batch_stats, batch)
        initial = losses if initial is None else initial
        grad_norms = np.linalg.norm(
            jac["shared"]["Conv3x3_2"]["kernel"].reshape(num_tasks, -1), axis=1
        )
        norms = weights * grad_norms
        ratios = losses / initial
        targets = norms.mean() * (ratios / ratios.mean()) ** alpha
        new_weights = numpy_renormalize(
            weights - learning_rate * np.sign(norms - targets) * grad_norms
        )
        # The model steps on sum_i w_i L_i with the weights from before this step's update.
        expected_params = jax.tree.map(
            lambda p, g: p - learning_rate * np.tensordot(weights, g, 1),
            jax.tree.map(np.asarray, state.params),
            jac,
        )

        state, metrics = train_step(state, batch)
        np.testing.assert_allclose(metrics["task_losses"], losses, rtol=1e-5)
        np.testing.assert_allclose(metrics["loss"], weights @ losses, rtol=1e-5)
        np.testing.assert_allclose(
            metrics["gradnorm_loss"], np.abs(norms - targets).sum(), rtol=1e-4
        )
        np.testing.assert_allclose(metrics["task_weights"], new_weights, rtol=1e-4)
        np.testing.assert_allclose(state.tracker["weights"], new_weights, rtol=1e-4)
        np.testing.assert_allclose(state.tracker["initial_losses"], initial, rtol=1e-5)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            state.params,
            expected_params,
        )
        weights = new_weights
    assert not np.allclose(weights, 1.0)


def test_pcgrad_step_projects_uncertainty_weighted_trunk_gradients_only(tiny_problem):
    model, image_shape, batches, reference = tiny_problem
    learning_rate = 0.5
    optimizer = optax.sgd(learning_rate)
    log_sigma = np.array([1.0, 0.5, 0.2, 0.8], np.float32)
    state = baselines.with_extra_params(
        steps.init_train_state(model, optimizer, jax.random.key(0), image_shape),
        optimizer,
        {baselines.LOG_SIGMA: jnp.asarray(log_sigma)},
    )
    old = jax.tree.map(np.asarray, state.params)
    losses, jac = reference(state.params, state.batch_stats, batches[0])
    # Task t's term is L_t exp(-2 s_t) + s_t: its gradient is exp(-2 s_t) dL_t on the model,
    # 1 - 2 L_t exp(-2 s_t) on s_t.
    scale = np.exp(-2 * log_sigma)
    flat_shared = scale[:, None] * np.concatenate(
        [g.reshape(4, -1) for g in jax.tree.leaves(jac["shared"])], axis=1
    )
    assert (flat_shared @ flat_shared.T < 0).any()  # some tasks conflict, so projection matters
    expected_heads = jax.tree.map(
        lambda p, g: p - learning_rate * np.tensordot(scale, g, 1), old["heads"], jac["heads"]
    )
    expected_log_sigma = log_sigma - learning_rate * (1 - 2 * losses * scale)

    state, metrics = jax.jit(
        baselines.make_pcgrad_step(model, optimizer, uncertainty=True, strategy="unrolled")
    )(state, batches[0])
    np.testing.assert_allclose(metrics["task_losses"], losses, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], (losses * scale + log_sigma).sum(), rtol=1e-5)
    new_shared = np.concatenate([p.ravel() for p in jax.tree.leaves(state.params["shared"])])
    old_shared = np.concatenate([p.ravel() for p in jax.tree.leaves(old["shared"])])
    np.testing.assert_allclose(
        new_shared,
        old_shared - learning_rate * numpy_pcgrad(flat_shared).sum(0),
        rtol=1e-4,
        atol=1e-6,
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        state.params["heads"],
        expected_heads,
    )
    np.testing.assert_allclose(state.params[baselines.LOG_SIGMA], expected_log_sigma, rtol=1e-5)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("uw", marks=pytest.mark.slow),
        pytest.param("gradnorm", marks=pytest.mark.slow),
        "pcgrad",
    ],
)
def test_baseline_run_trains_and_writes_finite_results(tiny_config, tmp_path, method):
    tiny_config.method = method
    tiny_config.log_every_steps = 1
    workdir = str(tmp_path / method)
    train.train_and_evaluate(tiny_config, workdir)
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["method"] == method and results["steps"] == 6
    for split in ("validation", "test"):
        assert np.isfinite(results[split]["task_loss"]).all()
        assert np.isfinite(results[split]["total_error"])
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    summed_task_losses = [
        sum(v for k, v in r.items() if k.startswith("train/loss/"))
        for r in records
        if "train/loss" in r
    ]
    assert len(summed_task_losses) == 6
    assert summed_task_losses[-1] < summed_task_losses[0]
