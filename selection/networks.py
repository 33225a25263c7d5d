"""Standley et al. (ICML 2020): choosing trained networks under a budget.

Each candidate ``Network`` outputs some tasks, with a loss for each, and has a
cost (1 for a full-size network, 0.5 for a half-size single-task one). A
selection is a set of networks of total cost <= budget; its total is the SUM
over tasks of the lowest loss any selected network reaches on the task, a task
no selected network outputs (an *uncovered* task) counting ``UNCOVERED_LOSS``
(99, as in their code). ``select_networks`` allows uncovered tasks, as their code
does, and lists them in ``NetworkSelection.uncovered``; with ``cover_all`` it
chooses among the selections that output every task, or raises ``BudgetTooSmall``
naming the smallest budget that has one (``covering_budget``).
Selections are made on validation losses and reported on test losses:
``rescore`` looks each selected network up among the test networks (same tasks,
same cost) and recomputes every task's best loss there. Networks are read
from CSV files by ``network_files.load_networks``.
"""

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from scipy.optimize import LinearConstraint, milp

UNCOVERED_LOSS = 99.0
COST_TOLERANCE = 1e-9
TIE_TOLERANCE = 1e-12  # slack on bounds, which add up losses in another order
CLOCK_EVERY = 64  # search nodes between looks at the clock


@dataclass(frozen=True)
class Network:
    """A trained network: the tasks it outputs, its loss on each, its cost."""

    tasks: tuple
    losses: Mapping = field(hash=False)
    cost: float = 1.0

    def __post_init__(self):
        tasks = tuple(self.tasks)
        if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"network tasks must be distinct names, got {self.tasks!r}")
        if set(self.losses) != set(tasks):
            raise ValueError(
                f"network {'+'.join(tasks)} needs a loss for exactly its tasks, "
                f"got {sorted(self.losses)}"
            )
        losses = {t: float(self.losses[t]) for t in tasks}
        if not all(math.isfinite(v) for v in losses.values()):
            raise ValueError(f"network {'+'.join(tasks)} has a loss that is not a finite number")
        if not (math.isfinite(self.cost) and self.cost > 0):
            raise ValueError(f"network {'+'.join(tasks)} needs a positive cost, got {self.cost!r}")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "losses", MappingProxyType(losses))
        object.__setattr__(self, "cost", float(self.cost))


def task_order(networks):
    """Every task output by some network, in order of first appearance."""
    return tuple(dict.fromkeys(t for network in networks for t in network.tasks))


def best_losses(networks, tasks):
    """{task: lowest loss among the ``networks`` that output it, or UNCOVERED_LOSS if none
    does}."""
    return {
        t: min((n.losses[t] for n in networks if t in n.losses), default=UNCOVERED_LOSS)
        for t in tasks
    }


def total_loss(networks, tasks):
    """Sum over ``tasks`` (in that order) of their best loss among ``networks``."""
    return sum(best_losses(networks, tasks).values())


def _search_order(networks, tasks):
    """Network indices, best rank on some task first (rank 0 = lowest loss on
    that task among all networks): the bound then tightens early."""
    by_task = {t: sorted(n.losses[t] for n in networks if t in n.losses) for t in tasks}

    def rank(i):
        return min(
            (by_task[t].index(networks[i].losses[t]) for t in networks[i].tasks if t in by_task),
            default=len(networks),
        )

    return sorted(range(len(networks)), key=rank)


class NetworkSelection(list):
    """The chosen networks (a list, in input order), with ``total`` (their
    total loss over the tasks), ``gap`` (how much lower the best total
    could still be; 0.0 when proven optimal) and ``uncovered`` (the tasks, in
    task order, that no chosen network outputs: each counts UNCOVERED_LOSS in
    ``total``)."""

    def __init__(self, networks, total, gap=0.0, uncovered=()):
        super().__init__(networks)
        self.total, self.gap, self.uncovered = total, gap, tuple(uncovered)

    def to_dict(self):
        """JSON-ready form: each network's tasks, cost and losses; the uncovered tasks and
        what each of them counts in the total."""
        return {
            "networks": [
                {"tasks": list(n.tasks), "cost": n.cost, "losses": dict(n.losses)} for n in self
            ],
            "total": self.total,
            "gap": self.gap,
            "uncovered": list(self.uncovered),
            "uncovered_loss": UNCOVERED_LOSS,
        }


class BudgetTooSmall(ValueError):
    """No selection within ``budget`` outputs every task; ``covering_budget`` is the
    smallest budget that has one (None when some task is output by no network)."""

    def __init__(self, message, budget, covering_budget):
        super().__init__(message)
        self.budget, self.covering_budget = budget, covering_budget


def uncovered_tasks(networks, tasks):
    """The ``tasks`` (in their order) that none of ``networks`` outputs."""
    output = {t for network in networks for t in network.tasks}
    return tuple(t for t in tasks if t not in output)


def _cheapest_cover(networks, tasks, seconds):
    """Indices of the networks of least total cost that together output every task (exact:
    a set-cover integer programme, HiGHS), or None when some task is output by none.
    ValueError if it is not solved within ``seconds``."""
    if uncovered_tasks(networks, tasks):
        return None
    outputs = np.array([[t in n.losses for n in networks] for t in tasks], dtype=float)
    result = milp(
        [n.cost for n in networks],
        integrality=np.ones(len(networks)),
        bounds=(0, 1),
        constraints=[LinearConstraint(outputs, 1, np.inf)],
        options={"time_limit": max(seconds, 1e-3)},
    )
    if result.status != 0:
        raise ValueError(
            f"the cheapest selection that outputs every task was not found within the time "
            f"limit of {seconds:.3g} s ({result.message})"
        )
    return [i for i, x in enumerate(result.x) if x > 0.5]


def covering_budget(networks, tasks=None, time_limit=60.0):
    """The smallest total cost of networks that together output every task of ``tasks``
    (default: every task output), or None when some task is output by no network."""
    networks = list(networks)
    tasks = task_order(networks) if tasks is None else tuple(tasks)
    cover = _cheapest_cover(networks, tasks, time_limit)
    return None if cover is None else sum(networks[i].cost for i in cover)


def _greedy_cover(networks, tasks):
    """Indices of networks that together output every task (each needed: none can be
    dropped), picked by least cost per task not yet output; None when some task is output by
    no network."""
    if uncovered_tasks(networks, tasks):
        return None
    left, cover = set(tasks), []
    while left:
        useful = [i for i, n in enumerate(networks) if left & set(n.tasks)]
        best = min(useful, key=lambda i: networks[i].cost / len(left & set(networks[i].tasks)))
        cover.append(best)
        left -= set(networks[best].tasks)
    for i in sorted(cover, key=lambda i: -networks[i].cost):  # drop what the others cover
        rest = [networks[j] for j in cover if j != i]
        if not uncovered_tasks(rest, tasks):
            cover.remove(i)
    return cover


def _checked_cover(networks, tasks, budget, seconds):
    """The positions (in ``networks``) of a cover that fits ``budget`` (a greedy one if it
    does, else a cheapest one), or BudgetTooSmall naming the cheapest cover's cost."""
    cover = _greedy_cover(networks, tasks)
    if cover is not None and sum(networks[i].cost for i in cover) <= budget + COST_TOLERANCE:
        return cover
    cover = _cheapest_cover(networks, tasks, seconds)
    if cover is None:
        missing = ", ".join(uncovered_tasks(networks, tasks))
        raise BudgetTooSmall(
            f"no network outputs {missing}, so no budget covers every task", budget, None
        )
    cost = sum(networks[i].cost for i in cover)
    if cost > budget + COST_TOLERANCE:
        raise BudgetTooSmall(
            f"no selection of cost at most {budget:g} outputs every task: the smallest "
            f"budget that covers all {len(tasks)} tasks is {cost:g}",
            budget,
            cost,
        )
    return cover


def _loss_of_uncovered(networks, tasks):
    """A loss for an uncovered task above what any selection outputting every task totals
    (those totals lie within +-sum over tasks of their largest |loss|), so that every
    selection leaving a task uncovered totals more than each one that does not."""
    largest = {t: 0.0 for t in tasks}
    for network in networks:
        for t, loss in network.losses.items():
            if t in largest:
                largest[t] = max(largest[t], abs(loss))
    return 1.0 + 2.0 * sum(largest.values())


def select_networks(networks, *, budget, tasks=None, time_limit=60.0, cover_all=False):
    """Standley et al.'s budgeted choice: the networks of total cost <= budget with the lowest
    total loss over ``tasks``.

    Args:
      networks: the candidate ``Network``s (tasks, a loss per task, a cost).
      budget: the most total cost the chosen networks may have (>= 0).
      tasks: the tasks whose best losses are summed; default: every task some network outputs.
      time_limit: seconds of search (below).
      cover_all: below.

    Returns:
      A ``NetworkSelection``: the chosen networks, their total, the proof gap and the
      uncovered tasks. ValueError for a negative budget or time limit.

    Exact depth-first branch and bound: networks are tried best-ranked first
    (see ``_search_order``); a network is only added if it lowers some task's best
    loss (otherwise it can never matter); a branch is cut when the current
    best losses, lowered by every network still to be tried, cannot beat the
    incumbent. Ties in the total go to fewer networks, then to the first found.
    No selected network is redundant. time_limit: seconds; if the search is
    not over by then, the best selection found is returned with a positive
    ``gap``: the incumbent's total minus the lowest bound of an unexplored branch.

    cover_all: False counts each uncovered task UNCOVERED_LOSS (Standley et al.; the result's
    ``uncovered`` lists them). True chooses among the selections that output every task only,
    starting from one that fits the budget, so that even a search stopped by the time limit
    returns one;
    BudgetTooSmall (a ValueError) when the budget allows none.
    """
    networks = list(networks)
    tasks = task_order(networks) if tasks is None else tuple(tasks)
    if not budget >= 0:
        raise ValueError(f"budget must be a non-negative number, got {budget!r}")
    if not time_limit > 0:
        raise ValueError(f"time_limit must be positive, got {time_limit!r}")
    deadline = time.monotonic() + time_limit
    order = _search_order(networks, tasks)
    # per task: the best loss of the chosen networks, inf while none outputs it
    losses = [tuple(networks[i].losses.get(t, math.inf) for t in tasks) for i in order]
    costs = [networks[i].cost for i in order]
    still_reachable = [(math.inf,) * len(tasks)]
    for row in reversed(losses):
        still_reachable.insert(0, tuple(map(min, row, still_reachable[0])))
    uncovered = _loss_of_uncovered(networks, tasks) if cover_all else UNCOVERED_LOSS

    def lowest_reachable(position, current):  # a lower bound on the total below a node
        return sum(
            min(uncovered if c == math.inf else c, r)
            for c, r in zip(current, still_reachable[position])
        )

    best_key, best_chosen = (len(tasks) * uncovered, 0), ()
    if cover_all:
        cover = _checked_cover(networks, tasks, budget, deadline - time.monotonic())
        best_chosen = tuple(sorted(order.index(i) for i in cover))
        covered = [min(column) for column in zip(*(losses[p] for p in best_chosen))]
        best_key = (sum(covered), len(best_chosen))
    stack = [(0, (), (math.inf,) * len(tasks), 0.0)]  # depth first, "add" branch first
    nodes = 0
    while stack:
        nodes += 1
        if nodes % CLOCK_EVERY == 0 and time.monotonic() > deadline:
            break
        position, chosen, current, spent = stack.pop()
        key = (sum(uncovered if c == math.inf else c for c in current), len(chosen))
        if key < best_key:
            best_key, best_chosen = key, chosen
        if position == len(order):
            continue
        if (lowest_reachable(position, current) - TIE_TOLERANCE, len(chosen) + 1) >= best_key:
            continue
        stack.append((position + 1, chosen, current, spent))
        lowered = tuple(map(min, current, losses[position]))
        if spent + costs[position] <= budget + COST_TOLERANCE and lowered != current:
            stack.append((position + 1, chosen + (position,), lowered, spent + costs[position]))
    lowest = min(
        [best_key[0]] + [lowest_reachable(position, current) for position, _, current, _ in stack]
    )
    gap = best_key[0] - lowest if best_key[0] - lowest > TIE_TOLERANCE else 0.0
    chosen = [networks[i] for i in sorted(order[p] for p in best_chosen)]
    return NetworkSelection(chosen, total_loss(chosen, tasks), gap, uncovered_tasks(chosen, tasks))


def hoa_approximation(networks):
    """Standley et al.'s higher-order approximation: every network of >= 3
    tasks gets, for each task t, the mean of t's loss in the pair networks
    {t, u}, u another of its tasks (summed in its task order). Other networks
    are returned unchanged. Needs exactly one two-task network per pair used."""
    pairs = {}
    for network in networks:
        if len(network.tasks) == 2:
            key = frozenset(network.tasks)
            if key in pairs:
                raise ValueError(f"several pair networks for {'+'.join(network.tasks)}")
            pairs[key] = network

    def pair_loss(t, u):
        if frozenset((t, u)) not in pairs:
            raise ValueError(f"no pair network for {t}+{u}, needed by the approximation")
        return pairs[frozenset((t, u))].losses[t]

    def approximated(network):
        if len(network.tasks) < 3:
            return network
        losses = {
            t: sum(pair_loss(t, u) for u in network.tasks if u != t) / (len(network.tasks) - 1)
            for t in network.tasks
        }
        return Network(network.tasks, losses, network.cost)

    return [approximated(n) for n in networks]


def matching_networks(selected, candidates):
    """For each selected network, the candidate with the same tasks and cost
    (e.g. its test-set counterpart); ValueError if none or several."""

    def match(network):
        same = [
            c
            for c in candidates
            if set(c.tasks) == set(network.tasks) and abs(c.cost - network.cost) <= COST_TOLERANCE
        ]
        if len(same) != 1:
            raise ValueError(
                f"{len(same)} networks match {'+'.join(network.tasks)} (cost {network.cost:g})"
            )
        return same[0]

    return [match(n) for n in selected]


def rescore(selected, test_networks, tasks=None):
    """Total loss of a selection recomputed on other (test) values: each
    selected network is replaced by its match in ``test_networks``."""
    tasks = task_order(test_networks) if tasks is None else tuple(tasks)
    return total_loss(matching_networks(selected, test_networks), tasks)
