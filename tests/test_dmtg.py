"""DMTG: sampler, objective, K-branch network, fine-tune phase, read-out, end-to-end runs."""

import dataclasses
import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import load_config

from tag_jax import data, models, run_checks, steps, train
from tag_jax.data import synthetic
from tag_jax.errors import UserError
from tag_jax.methods import dmtg, dmtg_network, dmtg_outputs, dmtg_step

NUM_TASKS = 3


def numpy_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def tiny_net(strategy="unrolled", shared_stem="none", num_groups=3):
    config = load_config("tiny_test")
    config.model.conv = "im2col"
    config.dmtg.num_groups = num_groups
    config.dmtg.branch_strategy = strategy
    config.dmtg.shared_stem = shared_stem
    return dmtg_network.create_grouped_net(config, NUM_TASKS)


def tiny_batch(batch_size=6, size=8):
    image_key, label_key = jax.random.split(jax.random.key(7))
    return {
        "image": jax.random.normal(image_key, (batch_size, size, size, 3)),
        "labels": jax.random.randint(label_key, (batch_size, NUM_TASKS), 0, 2),
        "mask": jnp.ones((batch_size,)).at[-1].set(0.0),
    }


def initial_variables(net):
    return jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@jax.jit
def distinct_branches(variables):
    """The variables with every stacked (K, ...) parameter changed differently per branch."""

    def perturb(path, leaf):
        if path[0].key not in ("trunks", "heads"):
            return leaf
        pattern = jnp.sin(jnp.arange(leaf.size, dtype=leaf.dtype).reshape(leaf.shape))
        return leaf + 0.1 * pattern * jnp.arange(leaf.shape[0]).reshape(
            (-1,) + (1,) * (leaf.ndim - 1)
        )

    return {
        "params": jax.tree_util.tree_map_with_path(perturb, variables["params"]),
        "batch_stats": variables["batch_stats"],
    }


ASSIGNED = (1, 0, 1)  # arg-max groups of ASSIGNING_LOGITS
ASSIGNING_LOGITS = jnp.array([[0.0, 2.0, 1.0], [3.0, 1.0, 1.0], [0.0, 2.0, 1.0]])


@pytest.fixture(scope="module")
def net():
    return tiny_net()


@pytest.fixture(scope="module")
def initial(net):
    return initial_variables(net)


@pytest.fixture(scope="module")
def stem_initial():
    return initial_variables(tiny_net(shared_stem="stem"))


@pytest.fixture(scope="module")
def assigned_variables(initial):
    """Distinct branches (K = 3) and logits assigning the three tasks to groups ASSIGNED."""
    variables = distinct_branches(initial)
    variables["params"]["group_logits"] = ASSIGNING_LOGITS
    return variables


# --- sampler and objective ---


def test_relaxed_sample_is_softmax_of_noisy_logits_over_tau():
    rng = np.random.default_rng(0)
    theta, noise = rng.normal(size=(4, 3)), rng.gumbel(size=(4, 3))
    got = dmtg_step.gumbel_softmax(jnp.asarray(theta), jnp.asarray(noise), 2.5, hard=False)
    np.testing.assert_allclose(got, numpy_softmax((theta + noise) / 2.5), rtol=1e-5)


def test_sample_is_uniform_at_initialisation(initial):
    theta = initial["params"]["group_logits"]
    np.testing.assert_array_equal(theta, np.ones((NUM_TASKS, 3)))
    np.testing.assert_allclose(
        dmtg_step.gumbel_softmax(theta, jnp.zeros_like(theta), 2.5, hard=False), 1 / 3, rtol=1e-6
    )


def test_straight_through_is_one_hot_forward_with_the_soft_gradient():
    rng = np.random.default_rng(1)
    theta, noise = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.gumbel(size=(4, 3)))
    weights = jnp.asarray(rng.normal(size=(4, 3)))
    hard = dmtg_step.gumbel_softmax(theta, noise, 2.0, hard=True)
    soft = dmtg_step.gumbel_softmax(theta, noise, 2.0, hard=False)
    np.testing.assert_array_equal(hard, jax.nn.one_hot(soft.argmax(-1), 3))
    grads = [
        jax.grad(lambda t, h=h: (weights * dmtg_step.gumbel_softmax(t, noise, 2.0, hard=h)).sum())(
            theta
        )
        for h in (True, False)
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


def test_objective_and_its_logit_gradient_equal_a_hand_computation():
    rng = np.random.default_rng(2)
    num_groups, num_tasks, tau, entropy_weight = 3, 4, 2.5, 0.3
    pair_losses = rng.uniform(0.1, 2.0, size=(num_groups, num_tasks))  # ℓ[k, n]
    theta, noise = (
        rng.normal(size=(num_tasks, num_groups)),
        rng.gumbel(size=(num_tasks, num_groups)),
    )

    def loss(t):
        weights = dmtg_step.gumbel_softmax(t, jnp.asarray(noise), tau, hard=False)
        return dmtg_step.grouped_objective(jnp.asarray(pair_losses), weights, t, entropy_weight)

    (value, task_losses), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(theta))
    y = numpy_softmax((theta + noise) / tau)
    p = numpy_softmax(theta)
    entropy = -(p * np.log(p)).sum(-1)
    np.testing.assert_allclose(task_losses, (y * pair_losses.T).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(
        value, (y * pair_losses.T).sum() + entropy_weight * entropy.mean(), rtol=1e-5
    )
    # d/dΘ[n,k] Σ_j y[n,j] ℓ[j,n] = y[n,k] (ℓ[k,n] - Σ_j y[n,j] ℓ[j,n]) / τ;
    # d/dΘ[n,k] H(p[n]) = -p[n,k] (log p[n,k] + H(p[n])).
    expected_pairs = y * (pair_losses.T - (y * pair_losses.T).sum(-1, keepdims=True)) / tau
    expected_entropy = -p * (np.log(p) + entropy[:, None]) / num_tasks
    np.testing.assert_allclose(
        grad, expected_pairs + entropy_weight * expected_entropy, rtol=1e-4, atol=1e-6
    )


def test_branch_imbalance_is_zero_for_even_use_and_log_k_for_one_branch():
    assert float(dmtg_step.branch_imbalance(jnp.zeros((4, 3)))) == pytest.approx(0.0, abs=1e-6)
    one_branch = jnp.array([[50.0, 0.0, 0.0]] * 4)
    assert float(dmtg_step.branch_imbalance(one_branch)) == pytest.approx(np.log(3), rel=1e-5)
    rng = np.random.default_rng(4)
    theta = rng.normal(size=(5, 3))
    mean = numpy_softmax(theta).mean(0)
    assert float(dmtg_step.branch_imbalance(jnp.asarray(theta))) == pytest.approx(
        np.log(3) + (mean * np.log(mean)).sum(), rel=1e-5
    )


def test_robust_options_warm_up_own_logits_optimizer_and_averaged_samples(net, initial):
    """Θ stays put for warmup_steps (zero gradient), then moves by Adam's step after one zero
    gradient, lr sqrt(1 + b2) / (1 + b1) sign(g), while the network follows its own optimizer
    (here lr 0: unchanged); the weights average the samples."""
    batch = tiny_batch()
    variables = distinct_branches(initial)  # identical branches would give Θ a zero gradient
    optimizer = dmtg_step.with_logits_optimizer(optax.sgd(0.0), "adam", 0.05)
    state = steps.init_train_state(net, optimizer, jax.random.key(0), (8, 8, 3))
    state = state.replace(
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=optimizer.init(variables["params"]),
    )
    step = jax.jit(
        dmtg_step.make_dmtg_step(
            net,
            optimizer,
            seed=3,
            temperature=optax.constant_schedule(2.5),
            hard=False,
            entropy_weight=0.0,
            search_steps=10,
            warmup_steps=1,
            num_samples=4,
        )
    )
    warm, metrics = step(state, batch)
    np.testing.assert_array_equal(warm.params["group_logits"], state.params["group_logits"])
    np.testing.assert_array_equal(metrics["group_of_task"], np.zeros(NUM_TASKS))
    moved, _ = step(warm, batch)
    delta = np.asarray(moved.params["group_logits"] - warm.params["group_logits"])
    np.testing.assert_allclose(np.abs(delta), 0.05 * np.sqrt(1.999) / 1.9, rtol=1e-3)
    for a, b in zip(
        jax.tree.leaves(moved.params["trunks"]), jax.tree.leaves(warm.params["trunks"])
    ):
        np.testing.assert_array_equal(a, b)
    noise = np.asarray(
        jax.random.gumbel(jax.random.fold_in(jax.random.key(3), 1), (4, NUM_TASKS, 3))
    )
    theta = np.asarray(warm.params["group_logits"])
    averaged = np.mean([numpy_softmax((theta + g) / 2.5) for g in noise], axis=0)
    pair_losses = dmtg_step.pair_losses_fn(net, warm.batch_stats, batch)(warm.params)[0]
    _, metrics = jax.jit(step)(warm, batch)
    np.testing.assert_allclose(
        metrics["task_losses"], (averaged * np.asarray(pair_losses).T).sum(-1), rtol=1e-5
    )


def test_probe_heads_learn_unweighted_while_branches_and_logits_learn_the_weighted_loss(
    net, initial
):
    """probe_heads: one SGD step moves the branches and Θ by the gradient of Σ_n Σ_k y ℓ[k, n]
    (the reference objective) and the heads by the gradient of Σ ℓ[k, n], unweighted."""
    lr, seed, tau = 0.1, 5, 2.5
    batch = tiny_batch()
    variables = distinct_branches(initial)
    optimizer = optax.sgd(lr)
    state = steps.init_train_state(net, optimizer, jax.random.key(0), (8, 8, 3))
    state = state.replace(
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=optimizer.init(variables["params"]),
    )
    step = jax.jit(
        dmtg_step.make_dmtg_step(
            net,
            optimizer,
            seed=seed,
            temperature=optax.constant_schedule(tau),
            hard=False,
            entropy_weight=0.0,
            search_steps=10,
            probe_heads=True,
        )
    )
    moved, _ = step(state, batch)
    noise = jax.random.gumbel(jax.random.fold_in(jax.random.key(seed), 0), (NUM_TASKS, 3))

    def pair_losses(params):  # ℓ (K, N) from the logits, written out
        logits, _ = net.branch_logits(
            params, variables["batch_stats"], batch["image"], train=True, mask=batch["mask"]
        )
        log_p = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(log_p, batch["labels"][None, :, :, None], axis=-1)[..., 0]
        return -(picked * batch["mask"][None, :, None]).sum(1) / batch["mask"].sum()

    def weighted(params):
        y = jax.nn.softmax((params["group_logits"] + noise) / tau, axis=-1)
        return (y * pair_losses(params).T).sum()

    weighted_grads = jax.grad(weighted)(variables["params"])
    unweighted_grads = jax.grad(lambda p: pair_losses(p).sum())(variables["params"])
    for key, grads in (
        ("trunks", weighted_grads),
        ("group_logits", weighted_grads),
        ("heads", unweighted_grads),
    ):
        expected = jax.tree.map(lambda p, g: p - lr * g, variables["params"][key], grads[key])
        for a, b in zip(jax.tree.leaves(moved.params[key]), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    reference_heads = jax.tree.map(
        lambda p, g: p - lr * g, variables["params"]["heads"], weighted_grads["heads"]
    )
    assert not np.allclose(
        jax.tree.leaves(moved.params["heads"])[0],
        jax.tree.leaves(reference_heads)[0],
        rtol=1e-4,
        atol=1e-6,
    )


def written_out_pair_losses(net, batch_stats, batch):
    """ℓ (K, N)(params): masked mean cross-entropy of head (k, n) on branch k, from the logits."""

    def pair_losses(params):
        logits, _ = net.branch_logits(
            params, batch_stats, batch["image"], train=True, mask=batch["mask"]
        )
        log_p = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(log_p, batch["labels"][None, :, :, None], axis=-1)[..., 0]
        return -(picked * batch["mask"][None, :, None]).sum(1) / batch["mask"].sum()

    return pair_losses


def test_lookahead_alignment_is_each_tasks_loss_change_along_each_branch_update(net, initial):
    """a[k, n] = ℓ[k, n] now - after branch k steps along its gradient G_k, by a relative length
    (branch by branch, in a loop, in training mode), scaled to mean |a| = 1; to first order
    s_k <∇ℓ[k, n], G_k>, from per-task gradients. The lookahead's forward normalises from the
    forward now's batch-norm moments, moved by its own batch's change: on the whole batch, the
    training-mode forward's own moments after the step."""
    batch, variables = tiny_batch(), distinct_branches(initial)
    params, stats = variables["params"], variables["batch_stats"]
    pair_losses = written_out_pair_losses(net, stats, batch)
    y = jnp.asarray(numpy_softmax(np.random.default_rng(2).normal(size=(NUM_TASKS, 3))))
    trunk_grads = jax.grad(lambda p: (y * pair_losses(p).T).sum())(params)["trunks"]
    step_length = 1e-3
    now = np.asarray(pair_losses(params))
    moments = dmtg_step.pair_losses_fn(net, stats, batch)(params)[1]["moments"]
    lookahead = dmtg_step.pair_losses_fn(net, stats, batch, moments=moments)
    alignment = np.asarray(
        dmtg_step.lookahead_alignment(lookahead, params, trunk_grads, jnp.asarray(now), step_length)
    )

    def flat(tree, k):
        return np.concatenate(
            [np.asarray(leaf[k], np.float64).ravel() for leaf in jax.tree.leaves(tree)]
        )

    change, first_order = np.zeros((3, NUM_TASKS)), np.zeros((3, NUM_TASKS))
    for k in range(3):
        g, w = flat(trunk_grads, k), flat(params["trunks"], k)
        s = step_length * np.linalg.norm(w) / np.linalg.norm(g)
        stepped = jax.tree.map(
            lambda leaf, grad: leaf.at[k].add(-s * grad[k]), params["trunks"], trunk_grads
        )
        change[k] = now[k] - np.asarray(pair_losses({**params, "trunks": stepped}))[k]
        for n in range(NUM_TASKS):
            task_grad = jax.grad(lambda p: pair_losses(p)[k, n])(params)["trunks"]
            first_order[k, n] = s * flat(task_grad, k) @ g
    np.testing.assert_allclose(alignment, change / np.abs(change).mean(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(alignment, first_order / np.abs(first_order).mean(), atol=0.05)
    # no step, ℓ now from another computation: their rounding is not scaled up to a signal
    still = dmtg_step.lookahead_alignment(
        lookahead, params, jax.tree.map(jnp.zeros_like, trunk_grads), jnp.asarray(now), step_length
    )
    assert np.abs(np.asarray(still)).max() < 0.01


@pytest.mark.parametrize(
    "subsample, shared_stem, strategy",
    [
        (1, "none", "unrolled"),
        (2, "none", "unrolled"),
        (5, "none", "unrolled"),
        (2, "stem", "vmap"),
        (3, "stem", "map"),
    ],
)
def test_lookahead_adds_its_pull_through_the_relaxed_weights_to_thetas_gradient(
    subsample, shared_stem, strategy
):
    """One SGD step with lookahead_weight w moves Θ by -lr (∂Σ y ℓ/∂Θ - w ∂Σ y[n, k] a[k, n]/∂Θ),
    a = lookahead_alignment at the step's trunk gradient on every `subsample`-th example (with 5:
    examples 0 and 5, the padded one) with the whole batch's batch-norm moments; not at all during
    the warm-up."""
    net = tiny_net(strategy, shared_stem=shared_stem)
    initial = initial_variables(net)
    lr, seed, tau, weight = 0.1, 5, 2.5, 0.7
    batch, variables = tiny_batch(), distinct_branches(initial)
    params, stats = variables["params"], variables["batch_stats"]
    optimizer = optax.sgd(lr)
    state = steps.init_train_state(net, optimizer, jax.random.key(0), (8, 8, 3))
    state = state.replace(params=params, batch_stats=stats, opt_state=optimizer.init(params))
    step = jax.jit(
        dmtg_step.make_dmtg_step(
            net,
            optimizer,
            seed=seed,
            temperature=optax.constant_schedule(tau),
            hard=False,
            entropy_weight=0.0,
            search_steps=10,
            warmup_steps=1,
            lookahead_weight=weight,
            lookahead_step=0.01,
            lookahead_subsample=subsample,
        )
    )
    warm, _ = step(state, batch)
    np.testing.assert_array_equal(warm.params["group_logits"], params["group_logits"])
    warm = warm.replace(
        params={**warm.params, "trunks": params["trunks"], "heads": params["heads"]}
    )
    moved, _ = step(warm, batch)
    noise = jax.random.gumbel(jax.random.fold_in(jax.random.key(seed), 1), (NUM_TASKS, 3))
    pair_losses = written_out_pair_losses(net, warm.batch_stats, batch)

    def relaxed(theta):
        return jax.nn.softmax((theta + noise) / tau, axis=-1)

    grads = jax.grad(lambda p: (relaxed(p["group_logits"]) * pair_losses(p).T).sum())(warm.params)
    moments = dmtg_step.pair_losses_fn(net, warm.batch_stats, batch)(warm.params)[1]["moments"]
    examples = {key: value[::subsample] for key, value in batch.items()}
    assert examples["image"].shape[0] == len(range(0, 6, subsample))
    narrowed = jax.tree_util.tree_map_with_path(  # example rows: (B, C), stacked (K, B, C)
        lambda path, a: a[..., ::subsample, :] if path[-1].key.startswith("example_") else a,
        moments,
    )
    lookahead = dmtg_step.pair_losses_fn(net, warm.batch_stats, examples, moments=narrowed)
    alignment = dmtg_step.lookahead_alignment(
        lookahead, warm.params, grads["trunks"], lookahead(warm.params)[0], 0.01
    )
    pull = jax.grad(lambda theta: (relaxed(theta) * alignment.T).sum())(params["group_logits"])
    expected = params["group_logits"] - lr * (grads["group_logits"] - weight * pull)
    np.testing.assert_allclose(moved.params["group_logits"], expected, rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(pull)).max() > 1e-3  # the term is not negligible here


def test_logits_start_at_ones_or_ones_plus_seeded_noise():
    base = tiny_net()
    assert (initial_variables(base)["params"]["group_logits"] == 1).all()
    noisy = dataclasses.replace(base, logits_init_noise=0.5)
    theta = initial_variables(noisy)["params"]["group_logits"]
    expected = 1 + 0.5 * jax.random.normal(jax.random.fold_in(jax.random.key(0), 3), theta.shape)
    np.testing.assert_allclose(theta, expected, rtol=1e-6)
    for a, b in zip(
        jax.tree.leaves(initial_variables(noisy)["params"]["trunks"]),
        jax.tree.leaves(initial_variables(base)["params"]["trunks"]),
    ):
        np.testing.assert_array_equal(a, b)  # the branches start as before


def test_temperature_schedules_run_from_start_to_end_over_the_search_steps():
    config = ml_collections.ConfigDict(
        {"tau_schedule": "constant", "tau": 2.5, "tau_start": 4.0, "tau_end": 1.0}
    )
    assert float(dmtg_step.temperature_schedule(config, 100)(57)) == 2.5
    config.tau_schedule = "linear"
    linear = dmtg_step.temperature_schedule(config, 100)
    np.testing.assert_allclose([linear(0), linear(50), linear(100), linear(150)], [4, 2.5, 1, 1])
    config.tau_schedule = "exponential"
    exponential = dmtg_step.temperature_schedule(config, 100)
    np.testing.assert_allclose(
        [exponential(0), exponential(50), exponential(100), exponential(150)],
        [4, 2, 1, 1],
        rtol=1e-5,
    )


# --- the K-branch network ---


def test_trunk_equals_stem_then_residual_tail():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    trunk, stem, tail = (
        cls(width=4, conv="im2col") for cls in (models.Trunk, models.Stem, models.ResidualTail)
    )

    @jax.jit
    def whole_and_split(variables):
        params, stats = variables["params"], variables["batch_stats"]
        stem_vars = {
            "params": {"Conv3x3_0": params["Conv3x3_0"], "BatchNorm_0": params["BatchNorm_0"]},
            "batch_stats": {"BatchNorm_0": stats["BatchNorm_0"]},
        }
        tail_vars = {
            "params": {
                "Conv3x3_0": params["Conv3x3_1"],
                "BatchNorm_0": params["BatchNorm_1"],
                "Conv3x3_1": params["Conv3x3_2"],
                "BatchNorm_1": params["BatchNorm_2"],
            },
            "batch_stats": {
                "BatchNorm_0": stats["BatchNorm_1"],
                "BatchNorm_1": stats["BatchNorm_2"],
            },
        }
        split = tail.apply(tail_vars, stem.apply(stem_vars, x, train=False), train=False)
        return trunk.apply(variables, x, train=False), split

    whole, split = whole_and_split(trunk.init(jax.random.key(1), x, train=False))
    np.testing.assert_array_equal(split, whole)


@pytest.mark.parametrize("variables_fixture", ["initial", "stem_initial"])
def test_all_branches_and_head_copies_start_identical(variables_fixture, request):
    variables = request.getfixturevalue(variables_fixture)
    params = variables["params"]
    assert ("stem" in params) == (variables_fixture == "stem_initial")
    assert params["heads"]["kernel"].shape[:2] == (3, NUM_TASKS)
    for tree in (params["trunks"], params["heads"], variables["batch_stats"]["trunks"]):
        for leaf in jax.tree.leaves(tree):
            assert leaf.shape[0] == 3
            for k in (1, 2):
                np.testing.assert_array_equal(leaf[k], leaf[0])


def test_vmap_and_unrolled_branches_give_equal_losses_gradients_and_statistics(stem_initial):
    batch = tiny_batch()
    variables = distinct_branches(stem_initial)
    theta = variables["params"]["group_logits"]
    noise = jax.random.gumbel(jax.random.key(1), theta.shape)
    results = []
    for strategy in ("vmap", "unrolled"):
        losses = dmtg_step.pair_losses_fn(
            tiny_net(strategy, "stem"), variables["batch_stats"], batch
        )

        def total(params, losses=losses):
            pair_losses, aux = losses(params)
            weights = dmtg_step.gumbel_softmax(params["group_logits"], noise, 2.5, hard=False)
            return dmtg_step.grouped_objective(pair_losses, weights, params["group_logits"], 0.0)[
                0
            ], (
                pair_losses,
                aux["batch_stats"],
                aux["moments"],
            )

        results.append(jax.jit(jax.value_and_grad(total, has_aux=True))(variables["params"]))
    (vmap_loss, vmap_aux), vmap_grads = results[0]
    (unrolled_loss, unrolled_aux), unrolled_grads = results[1]
    np.testing.assert_allclose(vmap_loss, unrolled_loss, rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves((vmap_aux, vmap_grads)), jax.tree.leaves((unrolled_aux, unrolled_grads))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(vmap_aux[0][0], vmap_aux[0][1])  # the branches do differ


def test_inference_uses_the_arg_max_head_of_every_task(net, assigned_variables):
    image = tiny_batch()["image"]

    def both(variables):
        all_logits, _ = net.branch_logits(
            variables["params"], variables["batch_stats"], image, train=False
        )
        return net.apply(variables, image), all_logits

    got, all_logits = jax.jit(both)(assigned_variables)
    for task, group in enumerate(ASSIGNED):
        np.testing.assert_array_equal(got[:, task], all_logits[group, :, task])


def test_finetune_phase_trains_only_the_arg_max_heads_with_logits_frozen(net, assigned_variables):
    batch = tiny_batch()
    optimizer = optax.sgd(0.1)
    state = steps.TrainState(
        step=jnp.array(5, jnp.int32),
        params=assigned_variables["params"],
        batch_stats=assigned_variables["batch_stats"],
        opt_state=optimizer.init(assigned_variables["params"]),
        best_params=None,
        best_batch_stats=None,
        tracker={},
    )
    step = dmtg_step.make_dmtg_step(
        net,
        optimizer,
        seed=0,
        temperature=optax.constant_schedule(2.5),
        hard=False,
        entropy_weight=1.0,
        search_steps=5,
    )

    def step_and_pair_losses(state):
        return step(state, batch), dmtg_step.pair_losses_fn(net, state.batch_stats, batch)(
            state.params
        )[0]

    (new_state, metrics), pair_losses = jax.jit(step_and_pair_losses)(state)
    chosen = pair_losses[jnp.array(ASSIGNED), jnp.arange(NUM_TASKS)]
    np.testing.assert_allclose(metrics["task_losses"], chosen, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], chosen.sum(), rtol=1e-6)  # no entropy term
    np.testing.assert_array_equal(new_state.params["group_logits"], ASSIGNING_LOGITS)
    old_kernel, new_kernel = state.params["heads"]["kernel"], new_state.params["heads"]["kernel"]
    moved = np.abs(np.asarray(new_kernel - old_kernel)).sum(axis=(2, 3)) > 0  # (K, N)
    np.testing.assert_array_equal(
        moved, [[False, True, False], [True, False, True], [False, False, False]]
    )
    unused_trunk = jax.tree.map(
        lambda a, b: a[2] - b[2], new_state.params["trunks"], state.params["trunks"]
    )
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(unused_trunk))


# --- read-out ---


def test_groups_record_drops_empty_groups_and_lists_tasks_in_order():
    names = ("a", "b", "c", "d")
    theta = np.array(
        [[0.0, 0.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [2.0, 0.0, 0.0, 0.0]]
    )  # groups 2, 0, 2, 0
    record = dmtg_outputs.groups_record(names, theta, [])
    assert record["method"] == "dmtg" and record["tasks"] == list(names)
    (selection,) = record["selections"]
    assert selection["max_groups"] == 4
    assert selection["groups"] == [["a", "c"], ["b", "d"]]
    assert selection["assignment"] == {
        "a": ["a", "c"],
        "b": ["b", "d"],
        "c": ["a", "c"],
        "d": ["b", "d"],
    }
    assert selection["score"] is None and selection["gap"] is None
    np.testing.assert_allclose(record["probabilities"], numpy_softmax(theta), rtol=1e-6)


def test_reported_grouping_is_the_evaluated_parameters_theta(tmp_path):
    """groups.json follows the Θ the run evaluates (e.g. the early-stopping best), not the final."""
    names = ("a", "b", "c")
    final_theta = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # {a, b} {c}
    best_theta = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])  # {a} {b, c}
    state = types.SimpleNamespace(params={"group_logits": final_theta})
    final = types.SimpleNamespace(params={"group_logits": best_theta}, best_epoch=[1])
    config = load_config("tiny_test")
    config.dmtg.confidence.num_samples = 5000
    context = types.SimpleNamespace(
        workdir=str(tmp_path), task_names=names, config=config, steps_per_epoch=3
    )
    dmtg_outputs.write_dmtg_outputs(context, state, {"probabilities_per_epoch": []}, final)
    (selection,) = json.load(open(tmp_path / "groups.json"))["selections"]
    assert selection["groups"] == [["a"], ["b", "c"]]
    # No epoch end recorded: the confidence draws from the evaluated Θ, p = e^2 / (e^2 + 1):
    # {a} {b, c} with p^3 + (1 - p)^3.
    p = np.exp(2.0) / (np.exp(2.0) + 1.0)
    assert selection["confidence"] == pytest.approx(p**3 + (1 - p) ** 3, abs=0.02)
    method = dmtg.build(load_config("tiny_test"), names, (8, 8, 3), steps_per_epoch=3)
    assert method.served_groups(final.params) == [["a"], ["b", "c"]]


def test_bad_dmtg_values_are_user_errors(tiny_config):
    tiny_config.method = "dmtg"
    for key, value, message in [
        ("dmtg.branch_strategy", "pmap", "unknown config.dmtg.branch_strategy"),
        ("dmtg.shared_stem", "all", "unknown config.dmtg.shared_stem"),
        ("dmtg.tau_schedule", "cosine", "unknown config.dmtg.tau_schedule"),
        ("dmtg.num_groups", 0, "num_groups must be >= 1"),
        ("dmtg.tau", 0.0, "dmtg.tau must be > 0"),
        ("dmtg.finetune_epochs", 2, "finetune_epochs must be in"),
        ("dmtg.num_samples", 0, "num_samples must be >= 1"),
        ("dmtg.balance_weight", -1.0, "balance_weight must be >= 0"),
        ("dmtg.warmup_steps", -5, "warmup_steps must be >= 0"),
        ("dmtg.logits_init_noise", -0.5, "logits_init_noise must be >= 0"),
        ("dmtg.lookahead_weight", -1.0, "lookahead_weight must be >= 0"),
        ("dmtg.lookahead_subsample", 0, r"lookahead_subsample must be >= 1 \(an integer\), got 0"),
        ("dmtg.lookahead_subsample", 3, "lookahead_subsample must divide"),  # batch 32
        ("dmtg.lookahead_subsample", 8, "leave at least 8 examples"),
        ("dmtg.logits_optimizer", "sgd", "needs config.dmtg.logits_learning_rate > 0"),
        ("dmtg.logits_optimizer", "rmsprop", "unknown config.dmtg.logits_optimizer"),
    ]:
        config = tiny_config.copy_and_resolve_references()
        config.update_from_flattened_dict({key: value})
        with pytest.raises(UserError, match=message):
            run_checks.validate_config(config)
    config = tiny_config.copy_and_resolve_references()
    config.update_from_flattened_dict({"dmtg.lookahead_weight": 1.0, "dmtg.lookahead_step": 0.0})
    with pytest.raises(UserError, match="lookahead_step must be in"):
        run_checks.validate_config(config)


# --- end to end ---


def test_recovers_the_planted_groups(tmp_path):
    config = load_config("synthetic_dmtg")
    workdir = str(tmp_path / "planted")
    train.train_and_evaluate(config, workdir)
    record = json.load(open(os.path.join(workdir, "groups.json")))
    (selection,) = record["selections"]
    planted = synthetic.planted_groups(tuple(config.dataset.group_sizes))
    assert sorted(map(tuple, selection["groups"])) == sorted(planted)
    assert selection["max_groups"] == len(planted)
    assert len(record["probabilities_per_epoch"]) == config.num_epochs
    assert os.path.getsize(os.path.join(workdir, "dmtg_assignment.png")) > 1000


def test_celeba_config_builds_the_published_network_on_mock_data():
    from tag_jax.data import celeba

    config = load_config("celeba_dmtg")
    with celeba.mock_celeba(4):
        dataset = data.load_dataset(config)
    assert len(dataset.task_names) == 9 and dataset.image_shape == (64, 64, 3)
    run_checks.validate_config(config)
    method = dmtg.build(config, dataset.task_names, dataset.image_shape, steps_per_epoch=636)
    state = jax.eval_shape(method.init_state, jax.random.key(0))
    assert state.params["heads"]["kernel"].shape == (3, 9, 14400, 2)
    assert state.params["group_logits"].shape == (9, 3)
    batch = {
        "image": jnp.zeros((256, 64, 64, 3)),
        "labels": jnp.zeros((256, 9), jnp.int32),
        "mask": jnp.ones((256,)),
    }
    _, metrics = jax.eval_shape(method.train_step, state, batch)
    assert metrics["task_losses"].shape == (9,)


@pytest.mark.parametrize(
    "weight, subsample, passes", [(0.0, 2, 3), (0.3, 1, 6), (0.3, 2, 4.5), (0.3, 3, 4)]
)
def test_trunk_passes_count_the_lookahead_forward_on_its_share_of_the_batch(
    weight, subsample, passes
):
    cfg = dmtg.default_config()
    cfg.update(num_groups=3, lookahead_weight=weight, lookahead_subsample=subsample)
    assert dmtg.step_trunk_passes(cfg) == passes
