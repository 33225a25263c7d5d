"""How sure is the grouping: resampling summaries, verdicts and the block bootstrap."""

import numpy as np
import pytest

from selection import confidence

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
    indices = confidence.moving_block_indices(10, 3, 50, rng)
    assert indices.shape == (50, 10)
    assert indices.min() >= 0 and indices.max() <= 9
    for row in indices:
        for start in range(0, 10, 3):
            run = row[start : start + 3]
            np.testing.assert_array_equal(run, run[0] + np.arange(len(run)))
    # every window start is drawn: with 50 x 4 draws all 8 starts appear
    assert set(indices[:, ::3].ravel()) == set(range(8))


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
    # a window as long as the run can only draw the run itself
    whole = confidence.block_bootstrap_means(sums, counts, 3, 99, seed=0)
    np.testing.assert_allclose(whole, np.broadcast_to(sums[:11].sum(0) / 44, (3, 3, 3)))
