"""Budgeted network selection: the published Standley et al. tables, brute force, CSV."""

import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selection import (
    UNCOVERED_LOSS,
    BudgetTooSmall,
    Network,
    NetworkSelection,
    covering_budget,
    hoa_approximation,
    load_networks,
    matching_networks,
    rescore,
    select_networks,
    total_loss,
)
from selection.networks import _greedy_cover

DATA = Path(__file__).resolve().parent / "data" / "standley_selection"  # see its README.md
TASKS = tuple(str(t) for t in range(5))
SETTINGS = (1, 2, 3, 4)
METHODS = ("optimal", "esa", "hoa")
BUDGETS_PER_FILE = 9  # 1.0 to 5.0 in steps of 0.5


def networks_by_id(models):
    """{id: Network} from a data file's model list (tasks named '0'..'4')."""
    return {
        m["id"]: Network(
            tuple(str(t) for t in m["tasks"]),
            {str(t): m["losses"][t] for t in m["tasks"]},
            m["cost"],
        )
        for m in models
    }


def cases():
    """(file, budget index) for the 12 deterministic tables: 108 cases."""
    return [
        (f"setting{s}_{m}.json", i)
        for s in SETTINGS
        for m in METHODS
        for i in range(BUDGETS_PER_FILE)
    ]


def test_every_table_is_vendored():
    listed = json.loads((DATA / "index.json").read_text())["file_list"]
    tables = {f for f, _ in cases()}
    assert len(tables) == 12 and tables <= set(listed)
    assert all((DATA / f).is_file() for f in tables)
    assert all(
        len(json.loads((DATA / f).read_text())["expected"]) == BUDGETS_PER_FILE for f in tables
    )


@pytest.mark.parametrize("file, case", cases())
def test_standley_selection_and_test_totals(file, case):
    data = json.loads((DATA / file).read_text())
    expected = data["expected"][case]
    inputs = data["inputs"]
    if "raw_validation_models" in inputs:  # HOA: select on our own approximation
        raw = networks_by_id(inputs["raw_validation_models"])
        candidates = dict(zip(raw, hoa_approximation(list(raw.values()))))
    else:
        candidates = networks_by_id(inputs["selection_models"])
    evaluation = list(networks_by_id(inputs["evaluation_models"]).values())
    chosen = select_networks(list(candidates.values()), budget=expected["budget"], tasks=TASKS)

    ids = {id(n): key for key, n in candidates.items()}
    chosen_ids = sorted(ids[id(n)] for n in chosen)
    alternatives = {
        tuple(sorted(a["selected_ids"])): a["test_total"]
        for a in expected.get("val_tied_alternatives", [])
    }
    alternatives.setdefault(tuple(sorted(expected["selected_ids"])), expected["test_total"])
    assert tuple(chosen_ids) in alternatives
    assert total_loss(chosen, TASKS) == pytest.approx(expected["val_total_of_selection"], abs=1e-12)
    assert rescore(chosen, evaluation, TASKS) == pytest.approx(
        alternatives[tuple(chosen_ids)], abs=1e-12
    )
    assert sum(n.cost for n in chosen) <= expected["budget"]
    if tuple(chosen_ids) == tuple(sorted(expected["selected_ids"])):
        assert rescore(chosen, evaluation, TASKS) == pytest.approx(
            expected["test_total"], abs=1e-12
        )


@pytest.mark.parametrize("setting", SETTINGS)
def test_hoa_approximation_matches_published_models(setting):
    inputs = json.loads((DATA / f"setting{setting}_hoa.json").read_text())["inputs"]
    raw = list(networks_by_id(inputs["raw_validation_models"]).values())
    expected = list(networks_by_id(inputs["selection_models"]).values())
    approximated = hoa_approximation(raw)
    assert [(n.tasks, n.cost) for n in approximated] == [(n.tasks, n.cost) for n in expected]
    for mine, theirs in zip(approximated, expected):
        for t in mine.tasks:
            assert mine.losses[t] == pytest.approx(theirs.losses[t], abs=1e-12)
    assert sum(len(n.tasks) >= 3 for n in raw) == 16
    assert all(a is b for a, b in zip(approximated, raw) if len(b.tasks) < 3)


def test_hoa_approximation_is_the_pair_mean():
    pairs = [
        Network(("a", "b"), {"a": 1.0, "b": 2.0}),
        Network(("a", "c"), {"a": 3.0, "c": 4.0}),
        Network(("b", "c"), {"b": 5.0, "c": 6.0}),
    ]
    triple = Network(("a", "b", "c"), {"a": 0.0, "b": 0.0, "c": 0.0})
    approximated = hoa_approximation(pairs + [triple])[-1]
    assert dict(approximated.losses) == {"a": 2.0, "b": 3.5, "c": 5.0}
    with pytest.raises(ValueError, match="no pair network for b\\+c"):
        hoa_approximation(pairs[:2] + [triple])


def brute_force(networks, budget, tasks):
    """(lowest total, fewest networks reaching it) over every affordable subset; a task counts
    its lowest loss among the subset's networks that output it, UNCOVERED_LOSS if none does."""
    best = (len(tasks) * UNCOVERED_LOSS, 0)
    for count in range(1, len(networks) + 1):
        for subset in itertools.combinations(networks, count):
            if sum(n.cost for n in subset) <= budget + 1e-9:
                total = 0.0
                for t in tasks:
                    losses = [n.losses[t] for n in subset if t in n.tasks]
                    total += min(losses) if losses else UNCOVERED_LOSS
                best = min(best, (total, count))
    return best


@st.composite
def network_sets(draw):
    tasks = ("a", "b", "c", "d")[: draw(st.integers(2, 4))]
    networks = []
    for _ in range(draw(st.integers(1, 9))):
        members = draw(
            st.lists(st.sampled_from(tasks), min_size=1, max_size=len(tasks), unique=True)
        )
        # now and then a loss above UNCOVERED_LOSS (an error in percent, say)
        loss = st.one_of(st.integers(1, 9).map(lambda x: x / 10), st.just(150.0))
        losses = {t: draw(loss) for t in members}
        networks.append(Network(tuple(members), losses, draw(st.sampled_from([0.5, 1.0, 1.5]))))
    return networks, draw(st.sampled_from([0.5, 1.0, 2.0, 2.5, 4.0])), tasks


@settings(max_examples=80, deadline=None)
@given(network_sets())
def test_select_networks_matches_brute_force(instance):
    networks, budget, tasks = instance
    chosen = select_networks(networks, budget=budget, tasks=tasks)
    assert (total_loss(chosen, tasks), len(chosen)) == pytest.approx(
        brute_force(networks, budget, tasks), abs=1e-12
    )
    assert sum(n.cost for n in chosen) <= budget + 1e-9
    assert chosen.uncovered == tuple(t for t in tasks if not any(t in n.tasks for n in chosen))
    for n in chosen:  # no redundant network
        assert total_loss([m for m in chosen if m is not n], tasks) > total_loss(chosen, tasks)
    positions = [next(i for i, m in enumerate(networks) if m is n) for n in chosen]
    assert positions == sorted(positions), "input order"


def random_networks(num_tasks, count, seed):
    """(networks, tasks): a half-size net per task, then distinct random task
    subsets of cost 1 with losses drawn uniformly."""
    rng = np.random.default_rng(seed)
    tasks = tuple(f"t{i}" for i in range(num_tasks))
    networks = [Network((t,), {t: rng.uniform(0.5, 1.0)}, 0.5) for t in tasks]
    seen = set()
    while len(networks) < count:
        members = tuple(
            sorted(rng.choice(num_tasks, int(rng.integers(1, num_tasks + 1)), replace=False))
        )
        if members not in seen:
            seen.add(members)
            networks.append(
                Network(
                    tuple(tasks[i] for i in members),
                    {tasks[i]: rng.uniform(0.2, 1.0) for i in members},
                    1.0,
                )
            )
    return networks, tasks


def test_time_limit_returns_the_best_selection_so_far_with_its_gap():
    # 12 tasks, 298 networks, budget 3: no answer in 150 s without a time limit.
    networks, tasks = random_networks(12, 298, 0)
    start = time.monotonic()
    chosen = select_networks(networks, budget=3, tasks=tasks, time_limit=0.5)
    assert time.monotonic() - start < 0.5 + 1.0
    assert isinstance(chosen, NetworkSelection) and chosen
    assert 0.0 < chosen.gap < math.inf
    assert chosen.total == total_loss(chosen, tasks) < len(tasks) * UNCOVERED_LOSS
    assert sum(n.cost for n in chosen) <= 3


def test_gap_bounds_the_optimum_when_time_runs_out():
    networks, tasks = random_networks(8, 100, 1)
    optimum = select_networks(networks, budget=3, tasks=tasks)
    assert optimum.gap == 0.0 and optimum.total == total_loss(optimum, tasks)
    for time_limit in (1e-3, 0.02):
        hurried = select_networks(networks, budget=3, tasks=tasks, time_limit=time_limit)
        assert hurried.total == total_loss(hurried, tasks) >= optimum.total
        assert optimum.total >= hurried.total - hurried.gap - 1e-12
        assert sum(n.cost for n in hurried) <= 3
    assert select_networks(networks, budget=3, tasks=tasks, time_limit=1e-3).gap > 0.0


def test_time_limit_must_be_positive():
    with pytest.raises(ValueError, match="time_limit must be positive, got 0"):
        select_networks([Network(("a",), {"a": 0.1})], budget=1, time_limit=0)


def test_uncovered_tasks_count_99_and_are_listed():
    networks = [Network(("a",), {"a": 0.2}, 1.0), Network(("b",), {"b": 0.3}, 1.0)]
    chosen = select_networks(networks, budget=1.0)
    assert chosen == [networks[0]]
    assert total_loss(chosen, ("a", "b")) == pytest.approx(0.2 + UNCOVERED_LOSS)
    assert chosen.uncovered == ("b",)
    assert chosen.to_dict()["uncovered"] == ["b"] and chosen.to_dict()["uncovered_loss"] == 99
    nothing = select_networks(networks, budget=0.5)
    assert nothing == [] and nothing.uncovered == ("a", "b") and nothing.total == 2 * 99
    both = select_networks(networks, budget=2.0)
    assert both.uncovered == () and both.to_dict()["uncovered"] == []


# Three tasks, by hand: the cheapest networks outputting a, b and c are a + b+c (1 + 1.2);
# a+b + c costs 2.5, the three singles 3, a+b+c 3.
HAND = [
    Network(("a",), {"a": 0.5}, 1.0),
    Network(("b",), {"b": 0.4}, 1.0),
    Network(("c",), {"c": 0.3}, 1.0),
    Network(("a", "b"), {"a": 0.2, "b": 0.2}, 1.5),
    Network(("b", "c"), {"b": 0.1, "c": 0.6}, 1.2),
    Network(("a", "b", "c"), {"a": 0.9, "b": 0.9, "c": 0.9}, 3.0),
]


def test_covering_budget_by_hand():
    assert covering_budget(HAND) == pytest.approx(2.2)
    assert covering_budget(HAND, tasks=("b", "c")) == pytest.approx(1.2)
    assert covering_budget(HAND, tasks=("a", "z")) is None


def test_cover_all_refuses_a_budget_that_cannot_cover_every_task():
    with pytest.raises(BudgetTooSmall) as info:
        select_networks(HAND, budget=2.1, cover_all=True)
    assert info.value.budget == 2.1 and info.value.covering_budget == pytest.approx(2.2)
    assert str(info.value) == (
        "no selection of cost at most 2.1 outputs every task: "
        "the smallest budget that covers all 3 tasks is 2.2"
    )
    with pytest.raises(BudgetTooSmall, match="no network outputs z, so no budget") as info:
        select_networks(HAND, budget=100, tasks=("a", "z"), cover_all=True)
    assert info.value.covering_budget is None
    assert isinstance(info.value, ValueError)


def test_cover_all_by_hand():
    # budget 2.2: only a + b+c covers everything (a 0.5, b 0.1, c 0.6)
    chosen = select_networks(HAND, budget=2.2, cover_all=True)
    assert chosen == [HAND[0], HAND[4]] and chosen.total == pytest.approx(1.2)
    assert chosen.uncovered == () and chosen.gap == 0.0
    # budget 2.7: a+b with c (0.2 + 0.2 + 0.3) beats a + b+c
    chosen = select_networks(HAND, budget=2.7, cover_all=True)
    assert chosen == [HAND[2], HAND[3]] and chosen.total == pytest.approx(0.7)


def test_cover_all_covers_even_when_99_is_cheaper():
    """A loss above 99 (an error in percent, say): Standley's total prefers leaving the task
    uncovered, cover_all does not."""
    networks = [Network(("a",), {"a": 150.0}, 1.0), Network(("b",), {"b": 0.1}, 1.0)]
    partial = select_networks(networks, budget=2.0)
    assert partial == [networks[1]] and partial.uncovered == ("a",)
    assert partial.total == pytest.approx(99.1)
    covered = select_networks(networks, budget=2.0, cover_all=True)
    assert covered == networks and covered.uncovered == () and covered.total == 150.1


def brute_force_covering(networks, budget, tasks):
    """(lowest total, fewest networks) over every affordable subset outputting every task, or
    None if there is none."""
    best = None
    for count in range(1, len(networks) + 1):
        for subset in itertools.combinations(networks, count):
            covers = all(any(t in n.tasks for n in subset) for t in tasks)
            if covers and sum(n.cost for n in subset) <= budget + 1e-9:
                total = sum(min(n.losses[t] for n in subset if t in n.tasks) for t in tasks)
                best = (total, count) if best is None else min(best, (total, count))
    return best


@settings(max_examples=60, deadline=None)
@given(network_sets())
def test_cover_all_matches_brute_force(instance):
    networks, budget, tasks = instance
    expected = brute_force_covering(networks, budget, tasks)
    cheapest = min(
        (
            sum(n.cost for n in subset)
            for count in range(1, len(networks) + 1)
            for subset in itertools.combinations(networks, count)
            if all(any(t in n.tasks for n in subset) for t in tasks)
        ),
        default=None,
    )
    assert covering_budget(networks, tasks) == pytest.approx(cheapest)
    if expected is None:
        with pytest.raises(BudgetTooSmall):
            select_networks(networks, budget=budget, tasks=tasks, cover_all=True)
        return
    chosen = select_networks(networks, budget=budget, tasks=tasks, cover_all=True)
    assert (chosen.total, len(chosen)) == pytest.approx(expected, abs=1e-12)
    assert chosen.uncovered == () and sum(n.cost for n in chosen) <= budget + 1e-9


@settings(max_examples=60, deadline=None)
@given(network_sets())
def test_greedy_cover_outputs_every_task_and_needs_each_network(instance):
    networks, _, tasks = instance
    cover = _greedy_cover(networks, tasks)
    if any(not any(t in n.tasks for n in networks) for t in tasks):
        assert cover is None
        return
    chosen = [networks[i] for i in cover]
    assert all(any(t in n.tasks for n in chosen) for t in tasks)
    for n in chosen:
        assert not all(any(t in m.tasks for m in chosen if m is not n) for t in tasks)


def test_cover_all_covers_when_the_time_limit_stops_the_search():
    networks, tasks = random_networks(12, 298, 0)  # the 12 half-size singles cost 6
    start = time.monotonic()
    chosen = select_networks(networks, budget=6, tasks=tasks, time_limit=0.3, cover_all=True)
    assert time.monotonic() - start < 0.3 + 1.0
    assert chosen.uncovered == () and sum(n.cost for n in chosen) <= 6
    assert chosen.total == total_loss(chosen, tasks) < 12 and chosen.gap > 0.0


def test_matching_networks_needs_one_match():
    half = Network(("a",), {"a": 0.1}, 0.5)
    full = Network(("a",), {"a": 0.2}, 1.0)
    assert matching_networks([half], [full, Network(("a",), {"a": 0.3}, 0.5)])[0].losses["a"] == 0.3
    with pytest.raises(ValueError, match="0 networks match"):
        matching_networks([half], [full])


def test_load_networks_reads_the_csv_format(tmp_path):
    path = tmp_path / "networks.csv"
    path.write_text(
        "tasks,cost,depth,normal\ndepth,0.5,0.17,\ndepth+normal,1,0.16,0.09\nnormal|depth,2,0.1,0.08\n"
    )
    networks = load_networks(path)
    assert networks == [
        Network(("depth",), {"depth": 0.17}, 0.5),
        Network(("depth", "normal"), {"depth": 0.16, "normal": 0.09}, 1.0),
        Network(("normal", "depth"), {"depth": 0.1, "normal": 0.08}, 2.0),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("tasks,depth\ndepth,0.1\n", "'tasks' and 'cost'"),
        ("tasks,cost,depth\nsky,1,0.1\n", "unknown or missing task names"),
        ("tasks,cost,depth,normal\ndepth,1,0.1,0.2\n", "losses given for"),
        ("tasks,cost,depth\ndepth,1,nan\n", "not a finite number"),
        ("tasks,cost,depth\ndepth,cheap,0.1\n", "line 2"),
        ("tasks,cost,depth\n", "no networks"),
    ],
)
def test_load_networks_rejects_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_networks(path)


def test_network_validates_its_fields():
    with pytest.raises(ValueError, match="exactly its tasks"):
        Network(("a", "b"), {"a": 0.1})
    with pytest.raises(ValueError, match="positive cost"):
        Network(("a",), {"a": 0.1}, 0.0)
