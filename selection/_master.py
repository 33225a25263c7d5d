"""The master problem of branch and price over served sets (bit masks).

Maximise sum_S c(S) x_S subject to sum_{S containing t} x_S = 1 for every task t,
sum_S x_S <= k, x >= 0, over the generated columns, with c(S) = V(S) - PENALTY
(V as in ``_values``): the linear programme gives the duals that pricing needs,
the integer programme over the same columns gives partitions.
"""

from dataclasses import dataclass

import numpy as np
from scipy.optimize import LinearConstraint, linprog, milp

from ._pricing import mask_members

PENALTY = 1e-7  # per served set, gains scaled to max |gain| = 1
PRUNE_TOLERANCE = 1e-9
LP_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
TIME_LIMIT_REACHED = 1  # scipy's linprog status


@dataclass(frozen=True)
class LinearSolution:
    """The master linear programme's solution: the columns (bit masks), their weights x,
    the task duals (n,) and the dual of the cardinality row (>= 0)."""

    masks: list
    weights: np.ndarray
    duals: np.ndarray
    cardinality_dual: float


class Master:
    """The generated columns ({bit mask: c(S)}) and the set-partitioning programmes over them."""

    def __init__(self, n, max_sets):
        self.n, self.max_sets, self.columns = n, max_sets, {}

    def add(self, columns):
        self.columns.update(columns)

    def _arrays(self, masks):
        membership = mask_members(masks, self.n).T.astype(float)
        values = np.array([self.columns[m] for m in masks])
        return membership, values

    def solve(self, branching, seconds):
        """The linear programme over the columns allowed by ``branching``, or None if it is
        not solved within ``seconds``."""
        if seconds <= 0:
            return None
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
            options={**LP_OPTIONS, "time_limit": seconds},
        )
        if result.status == TIME_LIMIT_REACHED:
            return None
        if result.status != 0:
            raise RuntimeError(f"master linear programme failed: {result.message}")
        return LinearSolution(
            masks, result.x, -result.eqlin.marginals, max(0.0, -result.ineqlin.marginals[0])
        )

    def best_integer(self, seconds):
        """The best partition using generated columns only (HiGHS MILP, at most ``seconds``),
        or None."""
        if seconds <= 0:
            return None
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
            options={"time_limit": seconds, "mip_rel_gap": 0, "presolve": False},
        )
        if result.x is None:
            return None
        return [m for m, x in zip(masks, result.x) if x > 0.5]


def _pair_weights(solution, n):
    """(n, n): total weight of the columns serving both tasks."""
    members = mask_members(solution.masks, n).astype(float)
    return members.T @ (solution.weights[:, None] * members)


def fractional_pair(solution, n):
    """The pair (a, b) whose shared weight is nearest 1/2, or None if integral."""
    weights = _pair_weights(solution, n)
    closeness = np.minimum(weights, 1.0 - weights)
    np.fill_diagonal(closeness, 0.0)
    a, b = np.unravel_index(np.argmax(closeness), closeness.shape)
    return (int(a), int(b)) if closeness[a, b] > 1e-6 else None
