"""How sure is the grouping: resampling summaries, verdicts and the block bootstrap."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

import selection
from selection import confidence
from tag_jax import grouping, methods, steps, train
from tag_jax.errors import UserError

TASKS = ["a", "b", "c", "d"]


def test_grouping_confidence_against_hand_counts():
    reported = [["a", "b"], ["c", "d"]]
    sampled = [
        [["b", "a"], ["d", "c"]],  # the reported grouping, written in another order
        [["c", "d"], ["a", "b"]],  # again
        [["a", "c"], ["b", "d"]],
        [["a", "b", "c"], ["d", "c"]],  # overlapping groups
        [["a", "c"], ["d", "b"]],
    ]
    summary = confidence.grouping_confidence(reported, sampled, TASKS)
    assert summary["confidence"] == pytest.approx(2 / 5)
    assert summary["num_samples"] == 5
    assert summary["num_distinct"] == 3
    assert summary["alternatives"] == [
        {"groups": [["a", "c"], ["b", "d"]], "share": pytest.approx(2 / 5)},
        {"groups": [["a", "b", "c"], ["c", "d"]], "share": pytest.approx(1 / 5)},
    ]
    # pairs sharing a group, counted by hand over the five samples
    together = {
        ("a", "b"): 3,
        ("a", "c"): 3,
        ("a", "d"): 0,
        ("b", "c"): 1,
        ("b", "d"): 2,
        ("c", "d"): 3,
    }
    matrix = np.asarray(summary["co_membership"])
    for (s, t), n in together.items():
        i, j = TASKS.index(s), TASKS.index(t)
        assert matrix[i, j] == pytest.approx(n / 5)
        assert matrix[j, i] == pytest.approx(n / 5)
    np.testing.assert_allclose(np.diag(matrix), 1.0)


def test_task_order_defaults_to_the_reported_grouping():
    summary = confidence.grouping_confidence([["c", "a"], ["b"]], [[["a", "b"], ["c"]]])
    # order c, a, b: only a and b share a group in the one sample
    np.testing.assert_allclose(summary["co_membership"], [[1, 0, 0], [0, 1, 1], [0, 1, 1]], atol=0)
    assert summary["confidence"] == 0.0


def test_verdict_thresholds_are_inclusive():
    assert confidence.verdict(confidence.CLEAR_AT) == "clear"
    assert confidence.verdict(1.0) == "clear"
    assert confidence.verdict(confidence.PREFERRED_AT) == "uncertain"
    assert confidence.verdict(np.nextafter(confidence.PREFERRED_AT, 0)) == "no preferred grouping"
    assert confidence.verdict(0.5, clear_at=0.5, preferred_at=0.2) == "clear"
    with pytest.raises(ValueError, match="preferred_at"):
        confidence.verdict(0.5, clear_at=0.3, preferred_at=0.6)


def test_explanation_names_alternatives_when_uncertain():
    sampled = [[["a", "b"], ["c", "d"]]] * 6 + [[["a", "c"], ["b", "d"]]] * 4
    summary = confidence.grouping_confidence([["a", "b"], ["c", "d"]], sampled, TASKS)
    line = confidence.explanation(summary, clear_at=0.9, preferred_at=0.3)
    assert line.startswith("uncertain: chosen in 60% of 10 resamples")
    assert "{a, c} {b, d} (40%)" in line
    assert confidence.explanation(summary, clear_at=0.6, preferred_at=0.3).startswith("clear")
    low = confidence.explanation(summary, clear_at=0.9, preferred_at=0.7)
    assert low.startswith("no preferred grouping") and "2 distinct" in low


def test_resampled_means_against_hand_computation():
    sums = np.array([[2.0, 4.0], [3.0, 0.0], [10.0, 1.0]])  # three blocks of a 2-vector
    counts = np.array([2, 1, 5])
    indices = np.array([[0, 1, 2], [2, 2, 0], [1, 1, 1]])
    expected = [
        [(2 + 3 + 10) / 8, (4 + 0 + 1) / 8],
        [(10 + 10 + 2) / 12, (1 + 1 + 4) / 12],
        [3.0, 0.0],
    ]
    np.testing.assert_allclose(confidence.resampled_means(sums, counts, indices), expected)


def test_moving_blocks_are_runs_of_consecutive_blocks():
    rng = np.random.default_rng(0)
    indices = confidence.moving_block_indices(12, 3, 50, rng)
    assert indices.shape == (50, 12)
    assert indices.min() >= 0 and indices.max() <= 11
    for row in indices:
        for start in range(0, 12, 3):
            np.testing.assert_array_equal(row[start : start + 3], row[start] + np.arange(3))
    # every window start is drawn: with 50 x 4 draws all 10 starts appear
    assert set(indices[:, ::3].ravel()) == set(range(10))


def test_block_bootstrap_on_two_blocks_takes_the_four_hand_values():
    sums, counts = np.array([1.0, 5.0]), np.array([1, 3])
    means = confidence.block_bootstrap_means(sums, counts, 200, 1, seed=3)
    hand = {1.0, 5 / 3, (1 + 5) / 4}  # (0,0), (1,1), (0,1) or (1,0)
    assert {round(m, 12) for m in means} == {round(m, 12) for m in hand}


def test_block_bootstrap_is_deterministic_for_a_seed_and_skips_empty_blocks():
    rng = np.random.default_rng(1)
    sums, counts = rng.normal(size=(12, 3, 3)), np.array([4] * 11 + [0])
    first = confidence.block_bootstrap_means(sums, counts, 20, 4, seed=7)
    again = confidence.block_bootstrap_means(sums, counts, 20, 4, seed=7)
    other = confidence.block_bootstrap_means(sums, counts, 20, 4, seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.isfinite(first).all()
    # a window is clipped to a quarter of the blocks: 11 blocks, windows of 2, never 99
    assert confidence.window_length(11, 99) == 2 and confidence.window_length(3, 4) == 1
    rows = confidence.moving_block_indices(11, 99, 200, np.random.default_rng(0))
    assert len({tuple(r) for r in rows}) > 100


def planted_table(rng, noise, tasks=9):
    """(T, T) onto-from table: 1 within three planted groups of T/3, noise elsewhere."""
    group = np.arange(tasks) // (tasks // 3)
    return (group[:, None] == group[None]) + noise * rng.normal(size=(tasks, tasks))


@pytest.mark.parametrize(
    "objective, singletons", [("maximize", "forbid"), ("minimize", "diagonal")]
)
def test_grouping_scores_equal_the_selection_score(objective, singletons):
    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(7)]
    tables = rng.normal(size=(3, 7, 7))
    chosen = [
        selection.select_groups(
            (tasks, table), max_groups=3, objective=objective, singletons=singletons
        )
        for table in tables
    ]
    scores = confidence.grouping_scores(
        [c.groups for c in chosen], tasks, tables, objective, singletons
    )
    np.testing.assert_allclose(np.diag(scores), [c.score for c in chosen], atol=1e-9)
    # each table's own selection is its best (the optimum is proven)
    best = scores.max(axis=1) if objective == "maximize" else scores.min(axis=1)
    np.testing.assert_allclose(np.diag(scores), best)


def test_resampled_selections_solve_within_the_budget_then_score_candidates():
    rng = np.random.default_rng(1)
    tasks = [f"t{i}" for i in range(9)]
    tables = np.stack([planted_table(rng, 0.3) for _ in range(6)])
    planted = [tasks[0:3], tasks[3:6], tasks[6:9]]
    wrong = [tasks[0:2] + tasks[3:4], tasks[2:3] + tasks[4:6], tasks[6:9]]
    chosen, usage = confidence.resampled_selections(tasks, tables, {3: planted}, time_budget=60)
    assert usage["solved"] == 6 and usage["scored"] == 0 and usage["unproven"] == 0
    assert all(confidence.grouping_key(g) == confidence.grouping_key(planted) for g in chosen[3])
    # no time: every table takes the best candidate, here the reported groups or a worse one
    chosen, usage = confidence.resampled_selections(tasks, tables, {3: wrong}, time_budget=0)
    assert usage["solved"] == 0 and usage["scored"] == 6
    assert all(confidence.grouping_key(g) == confidence.grouping_key(wrong) for g in chosen[3])


def test_tracker_blocks_hold_consecutive_sums_and_merge_pairwise():
    rng = np.random.default_rng(2)
    records = rng.normal(size=(11, 3, 2)).astype(np.float32)  # 3 sources (2 tasks + all), 2 targets
    tracker = steps.init_affinity_tracker(3, 2, num_blocks=4)
    record = jax.jit(steps.record_affinity)
    for n, matrix in enumerate(records, start=1):
        tracker = record(tracker, matrix)
        # the buffer doubles its block length whenever n steps no longer fit in 4 blocks
        length = 1 if n <= 4 else 2 if n <= 8 else 4
        assert int(tracker["block_length"]) == length
        starts = range(0, n, length)
        expected = [records[s : min(s + length, n), :2].sum(axis=0) for s in starts]
        np.testing.assert_allclose(
            np.asarray(tracker["block_sums"])[: len(expected)], expected, rtol=1e-5
        )
        np.testing.assert_array_equal(
            tracker["block_counts"],
            [min(length, n - s) for s in starts] + [0] * (4 - len(expected)),
        )
    np.testing.assert_allclose(tracker["run_sum"], records.sum(axis=0), rtol=1e-5)


def test_tracker_memory_is_bounded_at_100_tasks():
    tracker = steps.init_affinity_tracker(100, 100)
    buffer_bytes = tracker["block_sums"].nbytes + tracker["block_counts"].nbytes
    assert buffer_bytes <= steps.AFFINITY_BLOCKS * 100 * 100 * 4 + steps.AFFINITY_BLOCKS * 4
    assert buffer_bytes < 11e6  # 256 blocks of 100 x 100 float32: about 10 MB, whatever the run

    def many(tracker):
        return jax.lax.fori_loop(
            0, 1000, lambda i, t: steps.record_affinity(t, jnp.full((100, 100), 1.0 * i)), tracker
        )

    tracker = jax.jit(many)(tracker)
    counts = np.asarray(tracker["block_counts"])
    assert tracker["block_sums"].shape == (steps.AFFINITY_BLOCKS, 100, 100)
    assert counts.sum() == 1000 and int(tracker["block_length"]) == 4  # 1000 steps in 250 blocks
    np.testing.assert_allclose(
        np.asarray(tracker["block_sums"])[:250, 0, 0], np.arange(1000).reshape(250, 4).sum(1)
    )


def test_resumed_run_keeps_the_blocks_and_writes_each_confidence(tiny_config, tmp_path):
    tiny_config.method = "tag"
    tiny_config.affinity.every_n_steps = 1  # 6 steps (3 an epoch), 6 blocks of one measured step
    tiny_config.affinity.confidence.num_resamples = 20
    tiny_config.early_stopping.patience = 0
    workdir = str(tmp_path)
    tiny_config.max_steps = 4  # pauses in the middle of epoch 2
    assert train.train_and_evaluate(tiny_config, workdir) == {"stopped_at_step": 4}
    tiny_config.max_steps = -1
    results = train.train_and_evaluate(tiny_config, workdir)

    blocks = np.load(os.path.join(workdir, "affinity_blocks.npz"))
    np.testing.assert_array_equal(blocks["block_counts"], [1] * 6)
    affinity = json.load(open(os.path.join(workdir, "affinity.json")))
    # the blocks recorded before the pause are kept: each epoch's three steps sum to its mean
    for epoch, mean in enumerate(affinity["per_epoch"]):
        np.testing.assert_allclose(
            blocks["block_sums"][3 * epoch : 3 * epoch + 3].sum(axis=0) / 3, mean, rtol=1e-5
        )
    record = json.load(open(os.path.join(workdir, "groups.json")))
    assert record["resampling"]["num_resamples"] == 20 and record["resampling"]["blocks"] == 6
    for s in record["selections"]:
        assert 0.0 <= s["confidence"] <= 1.0 and s["num_samples"] == 20
        assert s["verdict"] == confidence.verdict(s["confidence"])
        assert np.shape(s["co_membership"]) == (4, 4)
        shares = [a["share"] for a in s["alternatives"]]
        assert shares == sorted(shares, reverse=True)
        assert s["confidence"] + sum(shares) == pytest.approx(1.0)
    assert os.path.getsize(os.path.join(workdir, "grouping_confidence.png")) > 1000
    summary = results["outputs"]["selections"]
    assert [s["confidence"] for s in summary] == [s["confidence"] for s in record["selections"]]

    # the same blocks and seed give the same confidences again
    plain = [{key: s[key] for key in ("max_groups", "groups")} for s in record["selections"]]
    again, _ = grouping.resampled_confidence(
        record["tasks"],
        plain,
        {"sums": blocks["block_sums"], "counts": blocks["block_counts"]},
        tiny_config.affinity.confidence,
        time_limit=60.0,
    )
    for s, t in zip(again, record["selections"]):
        assert (s["confidence"], s["alternatives"]) == (t["confidence"], t["alternatives"])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_resamples", -1, "num_resamples must be >= 0"),
        ("block_length", 0, "block_length must be >= 1"),
        ("seed", -3, "seed must be in"),
        ("time_budget", 0.0, "time_budget must be > 0"),
    ],
)
def test_confidence_settings_are_checked(key, value, message):
    config = load_config("synthetic_tag")
    config.affinity.confidence[key] = value
    with pytest.raises(UserError, match=f"config.affinity.confidence.{message}"):
        methods.validate(config)


def test_resampling_cost_at_9_tasks_and_the_budget_at_40():
    rng = np.random.default_rng(3)
    tasks = [f"t{i}" for i in range(9)]
    tables = np.stack([planted_table(rng, 0.5) for _ in range(20)])
    reported = {2: [tasks[:6], tasks[6:]], 3: [tasks[0:3], tasks[3:6], tasks[6:9]]}
    _, usage = confidence.resampled_selections(tasks, tables, reported, time_budget=1e9)
    assert usage["solved"] == 40 and usage["scored"] == 0
    assert usage["cpu_seconds"] * 100 / 20 < 30  # 100 resamples, k = 2 and 3: ~6 s on 2 cores
    # 40 tasks: each solve takes about a second; the budget stops the solving, candidates follow
    tasks = [f"t{i}" for i in range(40)]
    group = np.arange(40) % 4
    tables = (group[:, None] == group) + 0.5 * rng.normal(size=(10, 40, 40))
    chosen, usage = confidence.resampled_selections(
        tasks, tables, {4: [tasks[g::4] for g in range(4)]}, time_budget=1.0, time_limit=1.0
    )
    assert usage["solved"] < 10 and usage["solved"] + usage["scored"] == 10
    assert len(chosen[4]) == 10 and usage["seconds"] < 10
