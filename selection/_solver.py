"""Branch and price: split the tasks into at most k served sets maximising sum V(S).

Served sets are bit masks over task indices; V is ``_values.served_values``.
Every set pays a tiny ``PENALTY`` so that, among equal totals, fewer sets win.

Master problem (a set-partitioning linear programme over the generated
columns): maximise sum_S c(S) x_S subject to sum_{S containing t} x_S = 1 for
every task t, sum_S x_S <= k, x >= 0, with c(S) = V(S) - PENALTY.

Bound. For ANY duals pi, every partition into at most k sets satisfies
sum c(S) = sum_t pi_t + sum_S (c(S) - pi(S)) <= sum_t pi_t + k * max(0, rho),
rho = the largest reduced cost c(S) - pi(S) over all allowed sets. The pricer
returns a proven upper bound on max(threshold, rho), threshold >= 0, so this
bound holds even when pricing or column generation is cut short; at the end of
column generation it equals the linear programme's optimum.

Incumbents: the one-set partition, beyond ``ENUMERATION_LIMIT`` tasks the
cuts of an average-linkage clustering into 2..k sets (``clustered_partitions``)
and a greedy grouping that merges a finer cut by least loss of value
(``merged_partitions``; both incumbents only, not columns), an integer
programme over the columns generated at the root, and every integral master
solution, each polished by a local search (``improve``).

Branching (Ryan and Foster): when the master's solution is fractional, some
pair of tasks shares a served set with weight strictly between 0 and 1; one
child forces them together, the other apart. Both pricers and the master only
use sets that respect a node's decisions, and a node whose decisions admit no
partition into k sets (a colouring test) is dropped. Nodes are taken best
bound first; the search ends when no open node's bound exceeds the incumbent
(proven optimum) or at the deadline. Then a last integer programme over all
generated columns gets a reserved share of the time.

Anytime bound: the smallest of ``task_upper_bound`` (every task at its best,
at once), ``relaxed_upper_bound`` (for each of ``_Search.ROW_SHARES``; beyond ``ENUMERATION_LIMIT`` tasks computed
right after the starting partitions, with up to a quarter of the time; for
fewer tasks only if the search ends unproven), the root's Lagrangian bound and
the largest bound among open nodes. ``progress`` hears of every better
incumbent or bound. Pricing's local search stops at the deadline too, so the
time limit holds at hundreds of tasks, up to the polishing of the starting
partitions.
"""

import heapq
import itertools
import time
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import LinearConstraint, linprog, milp
from scipy.sparse import coo_matrix
from scipy.spatial.distance import squareform

from ._branching import Branching, feasible_partition
from ._pricing import EnumeratedPricer, SearchPricer, column_values, mask_members
from ._values import served_values

PENALTY = 1e-7  # per served set, gains scaled to max |gain| = 1
PRUNE_TOLERANCE = 1e-9
REDUCED_COST_TOLERANCE = 1e-10
ENUMERATION_LIMIT = 20  # at most this many tasks: tabulate every set once
MERGE_FROM = 48  # merged_partitions: clusters to merge from, at most (unless k is larger)
LP_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


@dataclass(frozen=True)
class Partition:
    """A partition into served sets (bit masks), its penalised total and a
    proven upper bound on the best penalised total."""

    served_sets: tuple
    value: float
    upper_bound: float
    tolerance: float = PRUNE_TOLERANCE

    @property
    def proven(self):
        return self.upper_bound <= self.value + self.tolerance


@dataclass(frozen=True)
class _LinearSolution:
    masks: list
    weights: np.ndarray
    duals: np.ndarray
    cardinality_dual: float


class _Master:
    """The generated columns and the set-partitioning programmes over them."""

    def __init__(self, n, max_sets):
        self.n, self.max_sets, self.columns = n, max_sets, {}

    def add(self, columns):
        self.columns.update(columns)

    def _arrays(self, masks):
        membership = mask_members(masks, self.n).T.astype(float)
        values = np.array([self.columns[m] for m in masks])
        return membership, values

    def solve(self, branching):
        """The linear programme over the columns allowed by ``branching``."""
        masks = [m for m in self.columns if branching.allows(m)]
        membership, values = self._arrays(masks)
        result = linprog(
            -values,
            A_eq=membership,
            b_eq=np.ones(self.n),
            A_ub=np.ones((1, len(masks))),
            b_ub=[self.max_sets],
            bounds=(0, None),
            method="highs-ds",
            options=LP_OPTIONS,
        )
        if result.status != 0:
            raise RuntimeError(f"master linear programme failed: {result.message}")
        return _LinearSolution(
            masks, result.x, -result.eqlin.marginals, max(0.0, -result.ineqlin.marginals[0])
        )

    def best_integer(self, seconds):
        """The best partition using generated columns only (HiGHS MILP), or None."""
        masks = list(self.columns)
        membership, values = self._arrays(masks)
        result = milp(
            -values,
            integrality=np.ones(len(masks)),
            bounds=(0, 1),
            constraints=[
                LinearConstraint(membership, 1, 1),
                LinearConstraint(np.ones((1, len(masks))), 0, self.max_sets),
            ],
            options={"time_limit": max(seconds, 0.1), "mip_rel_gap": 0, "presolve": False},
        )
        if result.x is None:
            return None
        return [m for m, x in zip(masks, result.x) if x > 0.5]


def improve(off_gain, alone, served_sets, max_sets, deadline=None):
    """Local search: move one task at a time to the other set (or a new set)
    where the penalised total rises most, until no move helps (or the
    ``time.monotonic()`` deadline passes). Returns the improved list of bit masks."""
    sets = list(served_sets)
    values = list(column_values(off_gain, alone, sets, PENALTY))
    moved = True
    while moved:
        moved = False
        for t in range(len(alone)):
            if deadline is not None and time.monotonic() > deadline:
                return sets
            bit = 1 << t
            home = next(i for i, s in enumerate(sets) if s & bit)
            rest = sets[home] & ~bit
            rest_value = column_values(off_gain, alone, [rest], PENALTY)[0] if rest else 0.0
            targets = [i for i in range(len(sets)) if i != home] + (
                [None] if rest and len(sets) < max_sets else []
            )
            if not targets:
                continue
            joined = [bit if i is None else sets[i] | bit for i in targets]
            joined_values = column_values(off_gain, alone, joined, PENALTY)
            before = np.array([0.0 if i is None else values[i] for i in targets]) + values[home]
            gains = joined_values + rest_value - before
            best = int(np.argmax(gains))
            if gains[best] <= PRUNE_TOLERANCE:
                continue
            if targets[best] is None:
                sets.append(bit)
                values.append(joined_values[best])
            else:
                sets[targets[best]], values[targets[best]] = joined[best], joined_values[best]
            if rest:
                sets[home], values[home] = rest, rest_value
            else:
                del sets[home], values[home]
            moved = True
    return sets


def clustered_partitions(off_gain, max_sets):
    """Partitions of range(n) into 2..max_sets served sets (lists of bit masks):
    the cuts of an average-linkage tree over the distance max(G) - G, G the
    symmetrised (n, n) gains. Starting points for ``improve`` on large
    instances, where improving the one-set partition stalls far from good
    groups."""
    n = len(off_gain)
    if n < 3 or max_sets < 2:
        return []
    together = (off_gain + off_gain.T) / 2
    tree = linkage(squareform(together.max() - together, checks=False), method="average")
    partitions = []
    for count in range(2, min(max_sets, n) + 1):
        labels = fcluster(tree, t=count, criterion="maxclust")
        sets = [
            sum(1 << int(t) for t in np.flatnonzero(labels == label)) for label in np.unique(labels)
        ]
        if sets not in partitions:
            partitions.append(sets)
    return partitions


def merged_partitions(off_gain, alone, max_sets, deadline, finest=None):
    """Greedy grouping: from a fine partition (the average-linkage cut into ``finest`` sets,
    default 4 * max_sets but at most max(48, max_sets + 1) and n), repeatedly merge the two sets whose union loses the least
    value, down to 2 sets. Returns the partitions met with at most ``max_sets`` sets (lists of
    bit masks), fewest sets last. Unlike the tree's own cuts, the merges follow the objective:
    weakly related tasks are lumped into one set while strong groups stay apart (the best
    selection of k groups for many planted groups keeps k - 1 of them and lumps the rest)."""
    n = len(off_gain)
    if n < 3 or max_sets < 2:
        return []
    together = (off_gain + off_gain.T) / 2
    tree = linkage(squareform(together.max() - together, checks=False), method="average")
    finest = finest or max(min(4 * max_sets, MERGE_FROM), max_sets + 1)
    labels = fcluster(tree, t=min(finest, n), criterion="maxclust")
    members = [labels == label for label in np.unique(labels)]
    values = served_values(off_gain, alone, np.array(members))
    partitions = []
    while len(members) > 2 and time.monotonic() < deadline:
        pairs = [(a, b) for a in range(len(members)) for b in range(a + 1, len(members))]
        unions = np.array([members[a] | members[b] for a, b in pairs])
        losses = (
            values[[a for a, _ in pairs]]
            + values[[b for _, b in pairs]]
            - served_values(off_gain, alone, unions)
        )
        best = int(np.argmin(losses))
        a, b = pairs[best]
        members[a], values[a] = unions[best], values[a] - losses[best] + values[b]
        del members[b]
        values = np.delete(values, b)
        if len(members) <= max_sets:
            partitions.append([_mask(m) for m in members])
    return partitions


def _mask(members):
    """Bit mask of a (n,) bool membership row."""
    return sum(1 << int(t) for t in np.flatnonzero(members))


def task_upper_bound(off_gain, alone):
    """An upper bound on the best penalised total in O(n^2 log n): every task served at its best,
    max(alone[t], max over m of the mean of its m - 1 largest gains)."""
    return float(np.maximum(_top_means(off_gain).max(axis=1, initial=-np.inf), alone).sum())


def _top_means(weights):
    """(n, n - 1): entry [t, m - 2] is the mean of the m - 1 largest weights[t, u], u != t."""
    n = len(weights)
    ranked = -np.sort(-np.where(np.eye(n, dtype=bool), -np.inf, weights), axis=1)[:, : n - 1]
    return np.cumsum(ranked, axis=1) / np.arange(1, n)


def member_shares(off_gain, row_share):
    """(served, helper): (n, n - 1) upper bounds on a member's share of a group's total,
    [u, m - 2] for a group of m, when u is served (pays its dual) or a helper.

    A group G of m tasks serving S totals (1 / (m - 1)) sum of off_gain[t, v] over t in S,
    v in G, v != t. Split each term: ``row_share`` to t, the rest to v. Member u's share
    is then (1 / (m - 1)) sum over v in G, v != u, of row_share * off_gain[u, v] (if u is
    served) + (1 - row_share) * off_gain[v, u] (if v is served), at most the mean of its
    m - 1 largest weights max(row_share * g[u, v] + (1 - row_share) * g[v, u],
    row_share * g[u, v]) when served, max((1 - row_share) * g[v, u], 0) as a helper.
    row_share = 1 is "every served task picks its own best partners"; below 1 the
    partners' gains back count too, which limits noise that no group can pick up
    in both directions."""
    rest = 1.0 - row_share
    served = _top_means(np.maximum(row_share * off_gain + rest * off_gain.T, row_share * off_gain))
    helper = _top_means(np.maximum(rest * off_gain.T, 0.0)) if rest > 0 else np.zeros_like(served)
    return served, helper


def relaxed_upper_bound(off_gain, alone, max_sets, time_limit=None, row_share=1.0):
    """An upper bound on the best penalised total, found without pricing
    (infinite if the linear programme below exceeds ``time_limit`` seconds).

    Relaxation: a group of m tasks gives each member u at most a share
    a[u, m] - pi[u] if u is served, h[u, m] if it is a helper
    (``member_shares`` with ``row_share``; the shares sum to the group's
    total), and has m members. By the Lagrangian bound of the module
    docstring, any duals pi give sum(pi) + k * max(0, rho) with rho >= max
    over m of the sum of the m largest max(a[u, m] - pi[u], h[u, m], 0) (and
    >= alone[t] - pi[t]). Writing that top-m sum as
    min_{lam >= 0} m * lam + sum_u (max(...) - lam)^+ makes the best such
    bound one small linear programme in (pi, r, lam, nu).
    """
    n = len(alone)
    sizes = np.arange(2, n + 1)
    best_mean, helper = member_shares(off_gain, row_share)  # [u, m - 2]
    helpers = row_share < 1.0
    count, free = len(sizes), np.isfinite(alone)
    # variables: pi (n), r (1), lam (count), nu (n * count, [t, m] row-major)
    nu = n + 1 + count + np.arange(n * count).reshape(n, count)
    rows, cols, vals, upper = [], [], [], []
    for j, m in enumerate(sizes):  # m * lam_m + sum_t nu[t, m] - r <= 0
        rows += [j] * (n + 2)
        cols += [n, n + 1 + j] + nu[:, j].tolist()
        vals += [-1.0, float(m)] + [1.0] * n
        upper.append(0.0)
    for t in range(n):  # -pi_t - lam_m - nu[t, m] <= -a[t, m], and -lam_m - nu[t, m] <= -h[t, m]
        for j in range(count):
            rows += [len(upper)] * 3
            cols += [t, n + 1 + j, nu[t, j]]
            vals += [-1.0, -1.0, -1.0]
            upper.append(-best_mean[t, j])
            if helpers:
                rows += [len(upper)] * 2
                cols += [n + 1 + j, nu[t, j]]
                vals += [-1.0, -1.0]
                upper.append(-helper[t, j])
    for t in np.flatnonzero(free):  # -pi_t - r <= -alone_t
        rows += [len(upper)] * 2
        cols += [t, n]
        vals += [-1.0, -1.0]
        upper.append(-alone[t])
    objective = np.zeros(n + 1 + count + n * count)
    objective[:n], objective[n] = 1.0, max_sets
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(upper), len(objective)))
    bounds = [(None, None)] * n + [(0, None)] * (1 + count + n * count)
    options = LP_OPTIONS if time_limit is None else {**LP_OPTIONS, "time_limit": time_limit}
    result = linprog(
        objective, A_ub=matrix, b_ub=upper, bounds=bounds, method="highs-ipm", options=options
    )
    if result.status != 0:
        return np.inf
    pi = result.x[:n]  # re-evaluate the bound for these duals exactly, not trusting tolerances
    gains = np.sort(np.maximum(np.maximum(best_mean - pi[:, None], helper), 0.0), axis=0)[::-1]
    rho = max(
        np.cumsum(gains, axis=0)[sizes - 1, np.arange(count)].max(),
        max((alone - pi)[free], default=0.0),
        0.0,
    )
    return float(pi.sum() + max_sets * rho)


def _pair_weights(solution, n):
    """(n, n): total weight of the columns serving both tasks."""
    members = mask_members(solution.masks, n).astype(float)
    return members.T @ (solution.weights[:, None] * members)


def _fractional_pair(solution, n):
    """The pair (a, b) whose shared weight is nearest 1/2, or None if integral."""
    weights = _pair_weights(solution, n)
    closeness = np.minimum(weights, 1.0 - weights)
    np.fill_diagonal(closeness, 0.0)
    a, b = np.unravel_index(np.argmax(closeness), closeness.shape)
    return (int(a), int(b)) if closeness[a, b] > 1e-6 else None


class _Search:
    """State of one branch-and-price run."""

    MAX_NEW_COLUMNS_PER_TASK = 2
    FINAL_SHARE = 0.1  # of the time, kept for a last integer programme if unproven
    RELAXATION_SHARE = (
        0.25  # of the time, at most, for the relaxed bound (beyond ENUMERATION_LIMIT)
    )
    RELAXATION_MIN_SECONDS = 1.0  # its (n^2-variable) programme takes ~10 s at 200 tasks
    # relaxed_upper_bound's row shares: 1 (own best partners; the quicker programme, first),
    # then 0.6 (gains split between the two tasks; 0.19 -> 0.13 gap at 40 planted tasks, k = 5)
    ROW_SHARES = (1.0, 0.6)

    def __init__(self, off_gain, alone, max_sets, deadline, progress=None):
        self.off_gain, self.alone, self.max_sets = off_gain, alone, max_sets
        self.start, self.final_deadline = time.monotonic(), deadline
        self.deadline = deadline - self.FINAL_SHARE * (deadline - self.start)
        self.n = len(alone)
        pricer = EnumeratedPricer if self.n <= ENUMERATION_LIMIT else SearchPricer
        self.pricer = pricer(off_gain, alone, PENALTY)
        self.master = _Master(self.n, max_sets)
        self.best_sets, self.best_value = None, -np.inf
        self.upper, self.progress = np.inf, progress

    def _report(self):
        """Tell ``progress`` the incumbent and the proven bound (as a Partition)."""
        if self.progress is not None and self.best_sets is not None:
            self.progress(
                Partition(
                    self.best_sets,
                    self.best_value,
                    max(self.upper, self.best_value),
                    self._tolerance(),
                )
            )

    def tighten(self, bound):
        """Take a proven upper bound on the best penalised total; reports when it is lower."""
        if bound < self.upper - PRUNE_TOLERANCE:
            self.upper = bound
            self._report()

    def offer(self, sets, as_columns=True):
        """Polish a partition by local search and keep it if it beats the
        incumbent; its sets join the master's columns if ``as_columns``."""
        sets = improve(self.off_gain, self.alone, sets, self.max_sets, self.final_deadline)
        values = column_values(self.off_gain, self.alone, sets, PENALTY)
        if as_columns:
            self.master.add(zip(sets, values))
        value = float(values.sum())
        if value > self.best_value:
            self.best_sets, self.best_value = tuple(sorted(sets)), value
            self._report()

    def _time_left(self):
        return self.deadline - time.monotonic()

    def _tolerance(self):
        """How far a bound may exceed the incumbent and still count as proving it. Beyond
        ENUMERATION_LIMIT tasks this includes the incumbent's set penalties but one: a linear
        programme with fewer (fractional) sets scores above any partition by at most that, and
        closing it by branching took the whole time limit at 100 tasks for a tie-break at 1e-7."""
        if self.n <= ENUMERATION_LIMIT or self.best_sets is None:
            return PRUNE_TOLERANCE
        return PRUNE_TOLERANCE + (len(self.best_sets) - 1) * PENALTY

    def _relaxed_bound(self, seconds):
        """The smaller of ``relaxed_upper_bound`` for each of ``ROW_SHARES`` (in order, within
        ``seconds`` in all, each with what is left of them), less the one PENALTY every
        partition pays."""
        stop, bound = time.monotonic() + seconds, np.inf
        for share in self.ROW_SHARES:
            left = stop - time.monotonic()
            if left <= 0:
                break
            bound = min(
                bound, relaxed_upper_bound(self.off_gain, self.alone, self.max_sets, left, share)
            )
        return bound - PENALTY

    def column_generation(self, branching):
        """(master solution, proven bound on the node, whether pricing converged)."""
        bound = np.inf
        while True:
            solution = self.master.solve(branching)
            threshold = solution.cardinality_dual + REDUCED_COST_TOLERANCE
            in_use = [m for m, w in zip(solution.masks, solution.weights) if w > 1e-9]
            columns, price_bound = self.pricer.price(
                solution.duals,
                threshold,
                branching,
                self.deadline,
                self.MAX_NEW_COLUMNS_PER_TASK * self.n,
                in_use,
            )
            bound = min(bound, float(solution.duals.sum()) + self.max_sets * price_bound)
            new = [(m, v) for m, v in columns if m not in self.master.columns]
            if not new or bound <= self.best_value + self._tolerance() or self._time_left() <= 0:
                # Columns already in the master only come back through the linear
                # programme's tolerances: the master is then optimal.
                return solution, bound, not new and (bool(columns) or price_bound <= threshold)
            self.master.add(new)

    def run(self):
        """Best-bound-first branch and price; returns the Partition found."""
        self.offer([(1 << self.n) - 1])
        # The two relaxations bound the unpenalised total; every partition pays at least one PENALTY.
        self.tighten(task_upper_bound(self.off_gain, self.alone) - PENALTY)
        if self.n > ENUMERATION_LIMIT:
            starts = clustered_partitions(self.off_gain, self.max_sets) + merged_partitions(
                self.off_gain, self.alone, self.max_sets, self.deadline
            )
            for sets in starts:
                if self._time_left() <= 0:
                    break
                self.offer(
                    sets, as_columns=False
                )  # as columns they steered a 40-task search to worse sets
            seconds = max(
                self.RELAXATION_SHARE * (self.final_deadline - self.start),
                self.RELAXATION_MIN_SECONDS,
            )
            self.tighten(self._relaxed_bound(seconds))
        counter = itertools.count()
        root = Branching()
        open_nodes = [(-np.inf, next(counter), root)]
        while (
            open_nodes
            and self._time_left() > 0
            and self.upper > self.best_value + self._tolerance()
        ):
            node_bound, _, branching = heapq.heappop(open_nodes)
            if -node_bound <= self.best_value + self._tolerance():
                open_nodes = []
                break
            start = feasible_partition(self.n, branching, self.max_sets)
            if start is None:
                continue
            self.master.add(zip(start, column_values(self.off_gain, self.alone, start, PENALTY)))
            solution, bound, converged = self.column_generation(branching)
            if branching == root:
                self.tighten(max(bound, self.best_value))
                root_sets = self.master.best_integer(min(self._time_left(), 10.0))
                if root_sets:
                    self.offer(root_sets)
            if not converged:
                if bound > self.best_value + self._tolerance():
                    heapq.heappush(open_nodes, (-bound, next(counter), branching))
                continue
            pair = _fractional_pair(solution, self.n)
            if pair is None:
                self.offer([m for m, w in zip(solution.masks, solution.weights) if w > 0.5])
            elif bound > self.best_value + self._tolerance():
                for same in (True, False):
                    heapq.heappush(
                        open_nodes, (-bound, next(counter), branching.with_pair(*pair, same))
                    )
            if open_nodes:  # best bound first: the open nodes' largest bound holds everywhere
                self.tighten(max(self.best_value, -open_nodes[0][0]))
        upper = max([self.best_value] + [-b for b, _, _ in open_nodes])
        if self.upper <= self.best_value + self._tolerance():
            upper = self.best_value  # the anytime bound already proves it
        if upper > self.best_value + self._tolerance():
            if self.n <= ENUMERATION_LIMIT:
                seconds = max(
                    (self.final_deadline - time.monotonic()) / 2, self.RELAXATION_MIN_SECONDS
                )
                upper = min(upper, self._relaxed_bound(seconds))
            final_sets = self.master.best_integer(self.final_deadline - time.monotonic())
            if final_sets:
                self.offer(final_sets)
        self.upper = min(self.upper, max(upper, self.best_value))
        return Partition(self.best_sets, self.best_value, self.upper, self._tolerance())


def solve_partition(off_gain, alone, max_sets, deadline, progress=None):
    """Best partition of range(n) into at most ``max_sets`` served sets.

    off_gain: (n, n) gains (maximised) with zero diagonal, scaled so that
    max |gain| is about 1; alone: (n,) singleton values (-inf: forbidden);
    deadline: a ``time.monotonic()`` instant; progress: None or a callable
    given a ``Partition`` (incumbent and proven bound) whenever either improves.
    Returns a ``Partition``.
    """
    return _Search(off_gain, alone, max_sets, deadline, progress).run()
