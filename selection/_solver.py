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

Incumbents (``_incumbents``): the one-set partition, beyond ``ENUMERATION_LIMIT``
tasks the cuts of an average-linkage clustering into 2..k sets (``clustered_partitions``)
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

Anytime bound: the smallest of ``_bounds.task_upper_bound`` (every task at its best,
at once), ``_bounds.relaxed_upper_bound`` (for each of ``_Search.ROW_SHARES``; from
``ENUMERATION_LIMIT`` to ``_Search.RELAXATION_MAX_TASKS`` tasks computed among the starting
partitions, which are polished best first and leave it up to a quarter of the time; for
fewer tasks only if the search ends unproven), the root's Lagrangian bound and the largest
bound among open nodes. ``progress`` hears of every better incumbent or bound.

Time. The deadline is kept everywhere: every linear and integer programme gets the time
left (none once it has passed), the 2^n table gives way to the search pricer when it cannot
be completed in time, and every loop (local searches, pricing, merging, branching) looks at
the clock between steps, so a search ends within one such step of its deadline (measured:
0.2 to 0.5 s after it at 500 tasks on 2 busy cores, docs/selection_cli.md).
"""

import heapq
import itertools
import time
from dataclasses import dataclass

import numpy as np

from ._bounds import relaxed_upper_bound, task_upper_bound
from ._branching import Branching, feasible_partition
from ._incumbents import clustered_partitions, improve, merged_partitions
from ._master import PENALTY, PRUNE_TOLERANCE, Master, fractional_pair
from ._pricing import EnumeratedPricer, SearchPricer, column_table, column_values

REDUCED_COST_TOLERANCE = 1e-10
ENUMERATION_LIMIT = 20  # at most this many tasks: tabulate every set once


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


class _Search:
    """State of one branch-and-price run."""

    MAX_NEW_COLUMNS_PER_TASK = 2
    FINAL_SHARE = 0.1  # of the time, kept for a last integer programme if unproven
    RELAXATION_SHARE = (
        0.25  # of the time, at most, for the relaxed bound (beyond ENUMERATION_LIMIT)
    )
    RELAXATION_MIN_SECONDS = 1.0  # its (n^2-variable) programme takes ~10 s at 200 tasks
    # beyond this many tasks the relaxed bound is not tried: setting up its programme alone
    # took 2 to 4 s at 500 tasks, and solving it would take far longer than any time limit
    RELAXATION_MAX_TASKS = 200
    # relaxed_upper_bound's row shares: 1 (own best partners; the quicker programme, first),
    # then 0.6 (gains split between the two tasks; 0.19 -> 0.13 gap at 40 planted tasks, k = 5)
    ROW_SHARES = (1.0, 0.6)

    def __init__(self, off_gain, alone, max_sets, deadline, progress=None):
        self.off_gain, self.alone, self.max_sets = off_gain, alone, max_sets
        self.start, self.final_deadline = time.monotonic(), deadline
        self.deadline = deadline - self.FINAL_SHARE * (deadline - self.start)
        self.n = len(alone)
        table = None
        if self.n <= ENUMERATION_LIMIT:
            table = column_table(off_gain, alone, PENALTY, self.deadline)
        if table is None:  # many tasks, or no time to tabulate them
            self.pricer = SearchPricer(off_gain, alone, PENALTY)
        else:
            self.pricer = EnumeratedPricer(table)
        self.master = Master(self.n, max_sets)
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

    def offer(self, sets, as_columns=True, deadline=None):
        """Polish a partition by local search (until ``deadline``, default the caller's) and
        keep it if it beats the incumbent; its sets join the master's columns if
        ``as_columns``."""
        deadline = self.final_deadline if deadline is None else deadline
        sets = improve(self.off_gain, self.alone, sets, self.max_sets, deadline)
        values = column_values(self.off_gain, self.alone, sets, PENALTY)
        if as_columns:
            self.master.add(zip(sets, values))
        value = float(values.sum())
        if value > self.best_value:
            self.best_sets, self.best_value = tuple(sorted(sets)), value
            self._report()

    def _time_left(self):
        """Seconds until the search's deadline (negative once passed)."""
        return self.deadline - time.monotonic()

    def _final_time_left(self):
        """Seconds until the caller's deadline, which the last steps keep too."""
        return self.final_deadline - time.monotonic()

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
        """(master solution, proven bound on the node, whether pricing converged); the
        solution is None when time ran out before the first."""
        bound, solution = np.inf, None
        while True:
            latest = self.master.solve(branching, self._time_left())
            if latest is None:  # out of time: what the last solution proved stands
                return solution, bound, False
            solution = latest
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

    def _start(self):
        """Incumbents and bounds before branching (at 500 tasks the local search from the
        one-set partition alone can take the whole time)."""
        self.offer([(1 << self.n) - 1])
        # The relaxations bound the unpenalised total; every partition pays at least one PENALTY.
        self.tighten(task_upper_bound(self.off_gain, self.alone) - PENALTY)
        if self.n <= ENUMERATION_LIMIT or self._time_left() <= 0:
            return
        starts = clustered_partitions(self.off_gain, self.max_sets) + merged_partitions(
            self.off_gain, self.alone, self.max_sets, self.deadline
        )
        starts.sort(key=lambda sets: -column_values(self.off_gain, self.alone, sets, 0.0).sum())
        relaxation = 0.0
        if self.n <= self.RELAXATION_MAX_TASKS:
            share = self.RELAXATION_SHARE * (self.final_deadline - self.start)
            relaxation = max(share, self.RELAXATION_MIN_SECONDS)
        self._polish(starts, self.deadline - relaxation)
        if relaxation:
            self.tighten(self._relaxed_bound(min(relaxation, self._time_left())))
        self._polish(starts, self.deadline)

    def _polish(self, starts, deadline):
        """Offer the starting partitions (a list, emptied from the front) until ``deadline``.
        Not as columns: as columns they steered a 40-task search to worse sets."""
        while starts and time.monotonic() < deadline:
            self.offer(starts.pop(0), as_columns=False, deadline=deadline)

    def _branch_and_price(self):
        """Best-bound-first branch and price until proven or the search deadline; returns the
        open nodes left, as (-bound, counter, Branching)."""
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
                return []
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
            pair = fractional_pair(solution, self.n)
            if pair is None:
                self.offer([m for m, w in zip(solution.masks, solution.weights) if w > 0.5])
            elif bound > self.best_value + self._tolerance():
                for same in (True, False):
                    heapq.heappush(
                        open_nodes, (-bound, next(counter), branching.with_pair(*pair, same))
                    )
            if open_nodes:  # best bound first: the open nodes' largest bound holds everywhere
                self.tighten(max(self.best_value, -open_nodes[0][0]))
        return open_nodes

    def _finish(self, open_nodes):
        """The final bound and, if unproven, a last integer programme over all columns, both
        within the caller's deadline; returns the Partition found."""
        upper = max([self.best_value] + [-b for b, _, _ in open_nodes])
        if self.upper <= self.best_value + self._tolerance():
            upper = self.best_value  # the anytime bound already proves it
        if upper > self.best_value + self._tolerance():
            if self.n <= ENUMERATION_LIMIT:
                left = self._final_time_left()
                seconds = min(max(left / 2, self.RELAXATION_MIN_SECONDS), left)
                upper = min(upper, self._relaxed_bound(seconds))
            final_sets = self.master.best_integer(self._final_time_left())
            if final_sets:
                self.offer(final_sets)
        self.upper = min(self.upper, max(upper, self.best_value))
        return Partition(self.best_sets, self.best_value, self.upper, self._tolerance())

    def run(self):
        """Incumbents, then branch and price; returns the Partition found."""
        self._start()
        return self._finish(self._branch_and_price())


def solve_partition(off_gain, alone, max_sets, deadline, progress=None):
    """Best partition of range(n) into at most ``max_sets`` served sets.

    off_gain: (n, n) gains (maximised) with zero diagonal, scaled so that
    max |gain| is about 1; alone: (n,) singleton values (-inf: forbidden);
    deadline: a ``time.monotonic()`` instant; progress: None or a callable
    given a ``Partition`` (incumbent and proven bound) whenever either improves.
    Returns a ``Partition``.
    """
    return _Search(off_gain, alone, max_sets, deadline, progress).run()
