"""select_groups checked against a plain exhaustive search, plus input handling."""

import itertools
import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import selection._bounds as bounds
import selection._incumbents as incumbents
import selection._solver as solver
from selection import Selection, from_affinity_matrix, load_scores, select_groups
from selection._branching import Branching
from selection._master import Master
from selection._pricing import column_table, column_values, mask_members
from selection._values import served_values, without_diagonal


def brute_force(matrix, max_groups, maximize, diagonal):
    """(best mean, fewest groups reaching it): every selection of at most
    ``max_groups`` candidate groups (every subset of >= 2 tasks, singletons
    too when ``diagonal``) covering all tasks, each task taking its best group.
    """
    n = len(matrix)
    sign = 1.0 if maximize else -1.0
    rows = []  # gain (sign * score) of each candidate group on each task, -inf if absent
    for size in range(1 if diagonal else 2, n + 1):
        for group in itertools.combinations(range(n), size):
            row = [-math.inf] * n
            for t in group:
                row[t] = sign * (
                    matrix[t][t]
                    if size == 1
                    else sum(matrix[t][u] for u in group if u != t) / (size - 1)
                )
            rows.append(row)
    candidates = np.array(rows)
    best_value, best_count = -math.inf, None
    maxima, last = np.full((1, n), -math.inf), np.array([-1])  # the empty selection
    for count in range(1, max_groups + 1):
        grown, grown_last = [], []
        for c in range(len(candidates)):
            joined = np.maximum(maxima[last < c], candidates[c])  # add candidate c to each
            covered = np.isfinite(joined).all(axis=1)
            if covered.any() and joined[covered].mean(axis=1).max() > best_value + 1e-9:
                best_value, best_count = joined[covered].mean(axis=1).max(), count
            grown.append(joined)
            grown_last.append(np.full(len(joined), c))
        if count < max_groups:
            maxima, last = np.concatenate(grown), np.concatenate(grown_last)
    return sign * best_value, best_count


def task_score(matrix, group, t):
    """Score of task t in ``group`` (indices), read straight off the matrix."""
    if len(group) == 1:
        return matrix[t][t]
    return sum(matrix[t][u] for u in group if u != t) / (len(group) - 1)


def check_selection(result, tasks, matrix, max_groups, maximize):
    """Structure every Selection must have, recomputed independently."""
    index = {t: i for i, t in enumerate(tasks)}
    groups = [[index[t] for t in g] for g in result.groups]
    assert 1 <= len(groups) <= max_groups
    assert all(g == sorted(g) for g in groups), "each group in task order"
    assert set().union(*map(set, groups)) == set(range(len(tasks)))
    best = max if maximize else min
    served = set()
    total = 0.0
    for t in tasks:
        group = [index[u] for u in result.assignment[t]]
        assert group in groups and index[t] in group
        here = task_score(matrix, group, index[t])
        options = [task_score(matrix, g, index[t]) for g in groups if index[t] in g]
        assert here == pytest.approx(best(options), abs=1e-12)
        served.add(tuple(group))
        total += here
    assert served == {tuple(g) for g in groups}, "no redundant group"
    assert result.score == pytest.approx(total / len(tasks), abs=1e-12)


@st.composite
def instances(draw, max_tasks=7):
    """(matrix, max_groups, maximize, diagonal): random or planted-block tables
    with entries on a 0.1 grid (so ties happen)."""
    n = draw(st.integers(2, max_tasks))
    noise = draw(st.lists(st.integers(-20, 20), min_size=n * n, max_size=n * n))
    labels = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    strength = draw(st.sampled_from([0.0, 1.0, 3.0]))
    matrix = [
        [noise[i * n + j] / 10 + strength * (labels[i] == labels[j]) for j in range(n)]
        for i in range(n)
    ]
    max_groups = draw(st.integers(1, 3 if n > 6 else 4))
    return matrix, max_groups, draw(st.booleans()), draw(st.booleans())


def assert_matches_brute_force(matrix, max_groups, maximize, diagonal):
    tasks = [f"task{i}" for i in range(len(matrix))]
    result = select_groups(
        (tasks, matrix),
        max_groups=max_groups,
        objective="maximize" if maximize else "minimize",
        singletons="diagonal" if diagonal else "forbid",
    )
    value, count = brute_force(matrix, max_groups, maximize, diagonal)
    assert result.score == pytest.approx(value, abs=1e-9)
    assert len(result.groups) == count, "fewest groups among equal scores"
    assert result.gap == 0.0
    check_selection(result, tasks, matrix, max_groups, maximize)


@settings(max_examples=40, deadline=None)
@given(instances())
def test_matches_brute_force(instance):
    assert_matches_brute_force(*instance)


@settings(max_examples=25, deadline=None)
@given(instances(max_tasks=6))
def test_search_pricer_matches_brute_force(instance):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(solver, "ENUMERATION_LIMIT", 0)
        assert_matches_brute_force(*instance)


@settings(max_examples=30, deadline=None)
@given(instances(max_tasks=6), st.sampled_from([1.0, 0.6, 0.5, 0.0]))
def test_relaxed_bound_is_above_the_optimum(instance, row_share):
    matrix, max_groups, maximize, diagonal = instance
    gain = np.array(matrix) * (1 if maximize else -1)
    alone = np.diag(gain).copy() if diagonal else np.full(len(gain), -np.inf)
    off_gain = gain - np.diag(np.diag(gain))
    value, _ = brute_force(matrix, max_groups, maximize, diagonal)
    best_total = (value if maximize else -value) * len(matrix)
    assert (
        bounds.relaxed_upper_bound(off_gain, alone, max_groups, row_share=row_share)
        >= best_total - 1e-9
    )


@pytest.mark.parametrize("row_share", [1.0, 0.6, 0.5, 0.0])
def test_member_shares_bound_every_group_and_served_set(row_share):
    """Every group G (m >= 2 tasks) serving any non-empty S within it totals at most the sum
    over its members of their served or helper share bounds."""
    rng = np.random.default_rng(3)
    n = 6
    off_gain = without_diagonal(rng.normal(size=(n, n)))
    served, helper = bounds.member_shares(off_gain, row_share)
    for size in range(2, n + 1):
        for group in itertools.combinations(range(n), size):
            for count in range(1, size + 1):
                for members in itertools.combinations(group, count):
                    total = sum(off_gain[t, u] for t in members for u in group if u != t) / (
                        size - 1
                    )
                    bound = sum(
                        served[u, size - 2] if u in members else helper[u, size - 2] for u in group
                    )
                    assert total <= bound + 1e-9


def test_split_shares_tighten_the_relaxed_bound_on_planted_tables():
    """Splitting each gain between the two tasks bounds 40 planted tasks (blocks of 5, k = 5)
    closer to the best selection than every task picking its own partners."""
    rng = np.random.default_rng(40)
    labels = np.arange(40) % 8
    matrix = (labels[:, None] == labels[None, :]) + 0.3 * rng.normal(size=(40, 40))
    off_gain, alone = without_diagonal(matrix), np.full(40, -np.inf)
    own = bounds.relaxed_upper_bound(off_gain, alone, 5) / 40
    split = bounds.relaxed_upper_bound(off_gain, alone, 5, row_share=0.6) / 40
    best = select_groups(([f"t{i}" for i in range(40)], matrix), max_groups=5, time_limit=5.0).score
    assert best <= split < own - 0.05


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("maximize", [True, False])
@pytest.mark.parametrize("diagonal", [True, False])
def test_eight_tasks_three_groups_match_brute_force(seed, maximize, diagonal):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=8)
    matrix = (rng.normal(size=(8, 8)) + seed * (labels[:, None] == labels[None, :])).tolist()
    assert_matches_brute_force(matrix, 3, maximize, diagonal)


def test_overlapping_groups_when_a_helper_pays():
    matrix = [[0, -8, -6, -5], [-6, 0, 7, 2], [-9, -8, 0, -1], [2, 0, -4, 0]]
    result = select_groups((list("abcd"), matrix), max_groups=2)
    assert brute_force(matrix, 2, True, False) == (pytest.approx(-0.75), 2)
    assert result.groups == (("a", "d"), ("b", "c", "d"))
    assert result.assignment == {
        "a": ("a", "d"),
        "b": ("b", "c", "d"),
        "c": ("b", "c", "d"),
        "d": ("a", "d"),
    }
    assert result.score == -0.75


def test_fewest_groups_when_more_groups_cannot_help():
    # Two blocks of equal affinities: splitting a block never raises the score.
    labels = [0, 0, 0, 1, 1, 1]
    matrix = [[2.0 if labels[i] == labels[j] else -1.0 for j in range(6)] for i in range(6)]
    result = select_groups((list("abcdef"), matrix), max_groups=5)
    assert result.groups == (("a", "b", "c"), ("d", "e", "f"))
    assert result.score == 2.0


def test_minimize_with_diagonal_singletons():
    # HOA-style errors: b is best alone, a and c best together.
    matrix = [[0.5, 0.9, 0.2], [0.8, 0.1, 0.7], [0.3, 0.9, 0.6]]
    result = select_groups(
        (list("abc"), matrix), max_groups=2, objective="minimize", singletons="diagonal"
    )
    assert result.groups == (("a", "c"), ("b",))
    assert result.score == pytest.approx((0.2 + 0.1 + 0.3) / 3)


def test_dict_of_dicts_equals_matrix_form():
    rng = np.random.default_rng(4)
    tasks = ["x", "y", "z", "w", "v"]
    matrix = rng.normal(size=(5, 5))
    scores = {
        t: {u: float(matrix[i, j]) for j, u in enumerate(tasks) if i != j}
        for i, t in enumerate(tasks)
    }
    assert select_groups(scores, max_groups=2) == select_groups((tasks, matrix), max_groups=2)


def test_affinity_orientation_is_transposed():
    tasks = ["a", "b", "c"]
    source_target = [[0.0, 1.0, 2.0], [3.0, 0.0, 4.0], [5.0, 6.0, 0.0]]
    loaded_tasks, onto_from = from_affinity_matrix(tasks, source_target)
    assert loaded_tasks == tuple(tasks)
    assert onto_from[0].tolist() == [0.0, 3.0, 5.0]  # onto a from a, b, c


def test_load_scores_reads_both_json_forms(tmp_path):
    tasks = ["a", "b", "c"]
    source_target = [[1.0, 0.2, -0.3], [0.4, 1.0, 0.5], [-0.6, 0.7, 1.0]]
    affinity = tmp_path / "affinity.json"
    affinity.write_text(
        json.dumps(
            {
                "method": "tag",
                "tasks": tasks,
                "orientation": "matrix[source][target]",
                "matrix": source_target,
                "per_epoch": [],
                "steps_recorded": 3,
            }
        )
    )
    _, matrix = load_scores(affinity)
    assert matrix.tolist() == np.array(source_target).T.tolist()
    dict_form = tmp_path / "scores.json"
    dict_form.write_text(
        json.dumps(
            {t: {u: source_target[j][i] for j, u in enumerate(tasks)} for i, t in enumerate(tasks)}
        )
    )
    assert load_scores(dict_form)[1].tolist() == matrix.tolist()
    assert load_scores(dict_form, transpose=True)[1].tolist() == source_target


@pytest.mark.parametrize(
    "scores, message",
    [
        ({"a": {"b": 1.0}, "b": {}}, "missing score onto 'b' from 'a'"),
        ({"a": {"b": float("nan")}, "b": {"a": 1.0}}, "not a finite number"),
        ({"a": {"b": 1.0, "q": 2.0}, "b": {"a": 1.0}}, "unknown task 'q'"),
        ({"a": {"b": "high"}, "b": {"a": 1.0}}, "not a number"),
        ((["a", "b"], [[0.0, 1.0, 2.0], [1.0, 0.0, 2.0]]), "shape"),
        ((["a", "b"], [[0.0, 1.0], [1.0]]), "not numeric"),
        ((["a", "a"], [[0.0, 1.0], [1.0, 0.0]]), "distinct"),
        ("nonsense", "mapping"),
    ],
)
def test_bad_scores_raise_value_error(scores, message):
    with pytest.raises(ValueError, match=message):
        select_groups(scores, max_groups=2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_groups": 0}, "max_groups"),
        ({"max_groups": 2, "objective": "max"}, "objective"),
        ({"max_groups": 2, "singletons": "allow"}, "singletons"),
        ({"max_groups": 2, "singletons": "diagonal"}, "finite score"),
        ({"max_groups": 2, "time_limit": 0}, "time_limit"),
    ],
)
def test_bad_options_raise_value_error(options, message):
    scores = (["a", "b"], [[math.nan, 1.0], [2.0, math.nan]])
    with pytest.raises(ValueError, match=message):
        select_groups(scores, **options)


def test_to_dict_is_json_ready():
    result = select_groups((list("abc"), [[0, 1, 2], [1, 0, 3], [2, 3, 0]]), max_groups=2)
    assert json.loads(json.dumps(result.to_dict())) == {
        "groups": [list(g) for g in result.groups],
        "score": result.score,
        "assignment": {t: list(g) for t, g in result.assignment.items()},
        "gap": 0.0,
    }
    assert isinstance(result, Selection)


def planted(n, blocks, noise, seed):
    """(tasks, matrix, labels): affinity 1 inside blocks, 0 across, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % blocks
    matrix = (labels[:, None] == labels[None, :]) + noise * rng.normal(size=(n, n))
    return [f"t{i}" for i in range(n)], matrix, labels


def planted_value(matrix, labels):
    """Mean score of the planted blocks taken as the groups."""
    total = 0.0
    for t in range(len(labels)):
        mates = [u for u in range(len(labels)) if labels[u] == labels[t] and u != t]
        total += matrix[t, mates].mean()
    return total / len(labels)


def test_nine_tasks_four_groups_under_a_second():
    tasks, matrix, _ = planted(9, 3, 0.5, 0)
    for maximize in (True, False):
        start = time.monotonic()
        result = select_groups(
            (tasks, matrix), max_groups=4, objective="maximize" if maximize else "minimize"
        )
        assert time.monotonic() - start < 1.0
        assert result.gap == 0.0


def test_twenty_tasks_five_groups_proven_under_ten_seconds():
    tasks, matrix, labels = planted(20, 4, 0.5, 1)
    start = time.monotonic()
    result = select_groups((tasks, matrix), max_groups=5)
    assert time.monotonic() - start < 10.0
    assert result.gap == 0.0
    assert result.score >= planted_value(matrix, labels) - 1e-12
    check_selection(result, tasks, matrix, 5, True)


def test_gap_bounds_the_optimum_when_time_runs_out():
    tasks, matrix, _ = planted(14, 3, 1.0, 2)
    optimum = select_groups((tasks, matrix), max_groups=4)
    assert optimum.gap == 0.0
    for time_limit in (1e-3, 0.05, 0.3):
        hurried = select_groups((tasks, matrix), max_groups=4, time_limit=time_limit)
        check_selection(hurried, tasks, matrix, 4, True)
        assert 0.0 <= hurried.gap < math.inf
        assert hurried.score <= optimum.score + 1e-12
        assert optimum.score <= hurried.score + hurried.gap + 1e-9


def test_forty_tasks_returns_a_bounded_answer_quickly():
    tasks, matrix, labels = planted(40, 5, 0.3, 3)
    result = select_groups((tasks, matrix), max_groups=5, time_limit=5.0)
    check_selection(result, tasks, matrix, 5, True)
    assert result.score >= planted_value(matrix, labels) - 1e-12
    assert result.gap >= 0.0


@pytest.mark.parametrize("n", [5, 63, 64, 70, 130])
def test_mask_members_reads_bit_masks_of_any_width(n):
    rng = np.random.default_rng(n)
    rows = rng.random((6, n)) < 0.5
    rows[0, -1] = True  # the highest bit: bit 63 overflowed int64 at n = 64
    masks = [sum(1 << int(t) for t in np.flatnonzero(row)) for row in rows] + [(1 << n) - 1]
    expected = np.vstack([rows, np.ones(n, dtype=bool)])
    assert np.array_equal(mask_members(masks, n), expected)
    assert mask_members([], n).shape == (0, n)


def test_seventy_tasks_in_seven_planted_groups():
    """Beyond 63 tasks served sets no longer fit an int64 bit mask (this raised OverflowError)."""
    rng = np.random.default_rng(5)
    tasks = [f"t{i}" for i in range(70)]
    labels = rng.permutation(np.arange(70) // 10)
    matrix = 2.0 * (labels[:, None] == labels[None, :]) + 0.3 * rng.normal(size=(70, 70))
    start = time.monotonic()  # proven in about a second; the limit leaves room for a busy machine
    result = select_groups((tasks, matrix), max_groups=7, time_limit=20.0)
    assert time.monotonic() - start <= 1.1 * 20.0 + 1.0
    planted_groups = {tuple(t for t, label in zip(tasks, labels) if label == g) for g in range(7)}
    assert set(result.groups) == planted_groups
    assert result.score == pytest.approx(planted_value(matrix, labels), abs=1e-12)
    assert 0.0 <= result.gap < 1e-6
    check_selection(result, tasks, matrix, 7, True)


def groups_score(matrix, tasks, groups):
    """Mean over tasks of the best score among the groups holding it (maximised)."""
    index = {t: i for i, t in enumerate(tasks)}
    members = [[index[t] for t in g] for g in groups]
    return np.mean(
        [max(task_score(matrix, g, t) for g in members if t in g) for t in range(len(tasks))]
    )


@pytest.mark.parametrize("n, max_groups", [(9, 3), (40, 5)])
def test_progress_reports_improve_and_end_with_the_answer(n, max_groups):
    tasks, matrix, _ = planted(n, max(3, n // 5), 0.3, n)
    reports = []
    result = select_groups(
        (tasks, matrix), max_groups=max_groups, time_limit=3.0, progress=reports.append
    )
    assert reports and [r.final for r in reports] == [False] * (len(reports) - 1) + [True]
    last = reports[-1]
    assert (last.score, last.gap, last.groups) == (result.score, result.gap, result.groups)
    for before, after in zip(reports, reports[1:]):
        assert after.score >= before.score - 1e-12 and after.seconds >= before.seconds
        assert after.score + after.gap <= before.score + before.gap + 1e-9  # the bound only falls
    for report in reports:
        assert report.gap >= 0.0 and len(report.groups) <= max_groups
        assert report.score == pytest.approx(groups_score(matrix, tasks, report.groups), abs=1e-12)


def test_merged_partitions_keep_strong_groups_and_lump_the_rest():
    """8 planted blocks, 5 sets: the best split keeps 4 blocks and lumps the other 4, which the
    average-linkage cut (5 sets of blocks merged by noise) does not find."""
    _, matrix, labels = planted(40, 8, 0.05, 1)
    off_gain, alone = without_diagonal(matrix), np.full(40, -np.inf)
    merged = incumbents.merged_partitions(off_gain, alone, 5, time.monotonic() + 10)
    assert [len(p) for p in merged] == [5, 4, 3, 2]
    sizes = sorted(int(c).bit_count() for c in merged[0])
    assert sizes == [5, 5, 5, 5, 20]
    for mask in merged[0]:
        members = np.flatnonzero(mask_members([mask], 40)[0])
        assert len(members) == 20 or len(set(labels[members])) == 1
    value = lambda sets: column_values(off_gain, alone, sets, 0.0).sum()  # noqa: E731
    cuts = incumbents.clustered_partitions(off_gain, 5)
    assert value(merged[0]) > max(value(c) for c in cuts if len(c) == 5) + 0.1


def test_two_hundred_tasks_a_selection_with_its_gap_within_the_limit():
    tasks, matrix, labels = planted(200, 40, 0.3, 2)
    start = time.monotonic()
    result = select_groups((tasks, matrix), max_groups=5, time_limit=8.0)
    assert time.monotonic() - start <= 1.1 * 8.0 + 1.0
    check_selection(result, tasks, matrix, 5, True)
    assert 0.0 < result.gap < math.inf


def test_column_table_is_every_served_value_or_none_after_the_deadline():
    _, matrix, _ = planted(6, 2, 0.5, 0)
    off_gain, alone = without_diagonal(matrix), np.diag(matrix).copy()
    table = column_table(off_gain, alone, 0.25, time.monotonic() + 60)
    masks = np.arange(1, 64)
    expected = served_values(off_gain, alone, mask_members(masks, 6)) - 0.25
    assert table[0] == -np.inf and np.allclose(table[1:], expected, rtol=0, atol=1e-12)
    assert column_table(off_gain, alone, 0.25, time.monotonic() - 1) is None


def test_master_programmes_give_way_when_no_time_is_left():
    master = Master(3, 2)
    master.add({0b011: 1.0, 0b100: 0.5, 0b111: 1.2})
    assert master.solve(Branching(), 0.0) is None and master.best_integer(-1.0) is None
    solution = master.solve(Branching(), 10.0)
    assert solution.weights.tolist() == [1.0, 1.0, 0.0]  # {0, 1} and {2}: 1.5 against 1.2
    assert sorted(master.best_integer(10.0)) == [0b011, 0b100]


def test_twenty_tasks_keep_a_short_time_limit():
    """Tabulating the 2^20 served sets takes 1 to 3 s: a shorter limit prices by search."""
    tasks, matrix, _ = planted(20, 4, 0.3, 3)
    start = time.monotonic()
    result = select_groups((tasks, matrix), max_groups=3, time_limit=0.05)
    assert time.monotonic() - start <= 1.1 * 0.05 + 1.0
    check_selection(result, tasks, matrix, 3, True)


def test_three_hundred_tasks_keep_the_time_limit():
    tasks, matrix, _ = planted(300, 60, 0.3, 4)
    start = time.monotonic()
    result = select_groups((tasks, matrix), max_groups=3, time_limit=1.0)
    assert time.monotonic() - start <= 1.1 * 1.0 + 1.0
    assert 0.0 < result.gap < math.inf and len(result.assignment) == 300


@pytest.mark.parametrize("n, tried", [(30, True), (solver._Search.RELAXATION_MAX_TASKS + 1, False)])
def test_relaxed_bound_is_tried_up_to_its_task_limit(n, tried, monkeypatch):
    calls = []
    monkeypatch.setattr(solver, "relaxed_upper_bound", lambda *a: calls.append(a) or np.inf)
    tasks, matrix, _ = planted(n, max(2, n // 5), 0.3, 5)
    select_groups((tasks, matrix), max_groups=2, time_limit=1.0)
    assert bool(calls) == tried


def test_task_upper_bound_holds():
    for seed in range(5):
        _, matrix, _ = planted(6, 2, 0.5, seed)
        off_gain = without_diagonal(matrix)
        for alone in (np.full(6, -np.inf), np.diag(matrix).copy()):
            best, _ = brute_force(matrix, 3, True, np.isfinite(alone).all())
            assert bounds.task_upper_bound(off_gain, alone) >= 6 * best - 1e-9


@pytest.mark.slow
def test_forty_tasks_five_groups_within_a_minute():
    tasks, matrix, labels = planted(40, 5, 0.3, 4)
    start = time.monotonic()
    result = select_groups((tasks, matrix), max_groups=5, time_limit=60.0)
    assert time.monotonic() - start < 75.0
    assert result.score >= planted_value(matrix, labels) - 1e-12
    assert math.isfinite(result.gap)


def test_package_imports_no_deep_learning_framework():
    import subprocess
    import sys

    code = (
        "import sys, selection; "
        "print(sorted(m for m in ('jax', 'torch', 'tensorflow', 'tag_jax') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "[]"
