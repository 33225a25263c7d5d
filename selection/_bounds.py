"""Upper bounds on the best penalised total that need no pricing (maximisation form).

``task_upper_bound`` serves every task at its best at once; ``relaxed_upper_bound`` lets
every member of a group take at most its best possible share of the group's total
(``member_shares``) and solves the Lagrangian dual of that relaxation as one linear programme.
Both bound the unpenalised total: every partition also pays at least one PENALTY.
"""

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from ._master import LP_OPTIONS


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
    (infinite if the linear programme below exceeds ``time_limit`` seconds; HiGHS's interior
    point solver keeps that limit without presolve, not always with it).

    Relaxation: a group of m tasks gives each member u at most a share
    a[u, m] - pi[u] if u is served, h[u, m] if it is a helper
    (``member_shares`` with ``row_share``; the shares sum to the group's
    total), and has m members. By the Lagrangian bound (``_solver``'s
    docstring), any duals pi give sum(pi) + k * max(0, rho) with rho >= max
    over m of the sum of the m largest max(a[u, m] - pi[u], h[u, m], 0) (and
    >= alone[t] - pi[t]). Writing that top-m sum as
    min_{lam >= 0} m * lam + sum_u (max(...) - lam)^+ makes the best such
    bound one small linear programme in (pi, r, lam, nu).
    """
    n = len(alone)
    sizes = np.arange(2, n + 1)
    best_mean, helper = member_shares(off_gain, row_share)  # [u, m - 2]
    free = np.isfinite(alone)
    objective, matrix, upper, bounds = _relaxation_programme(
        best_mean, helper if row_share < 1.0 else None, alone, max_sets
    )
    options = {**LP_OPTIONS, "presolve": False}  # HiGHS's presolve ignores the time limit
    if time_limit is not None:
        options["time_limit"] = time_limit
    result = linprog(
        objective, A_ub=matrix, b_ub=upper, bounds=bounds, method="highs-ipm", options=options
    )
    if result.status != 0:
        return np.inf
    pi = result.x[:n]  # re-evaluate the bound for these duals exactly, not trusting tolerances
    gains = np.sort(np.maximum(np.maximum(best_mean - pi[:, None], helper), 0.0), axis=0)[::-1]
    rho = max(
        np.cumsum(gains, axis=0)[sizes - 1, np.arange(n - 1)].max(),
        max((alone - pi)[free], default=0.0),
        0.0,
    )
    return float(pi.sum() + max_sets * rho)


def _relaxation_programme(best_mean, helper, alone, max_sets):
    """(objective, sparse A_ub, b_ub, bounds) of ``relaxed_upper_bound``'s linear programme,
    minimised. Variables: pi (n), r (1), lam (n - 1: one per group size m = 2..n) and nu
    (n * (n - 1), [t, m] row-major). Rows: m * lam_m + sum_t nu[t, m] - r <= 0 for each m;
    -pi_t - lam_m - nu[t, m] <= -best_mean[t, m] and, unless ``helper`` is None,
    -lam_m - nu[t, m] <= -helper[t, m] for each t and m; -pi_t - r <= -alone_t for each t
    that may stand alone."""
    n, count = best_mean.shape[0], best_mean.shape[1]
    lam = n + 1 + np.arange(count)
    nu = n + 1 + count + np.arange(n * count).reshape(n, count)
    tasks, sizes = np.repeat(np.arange(n), count), np.tile(np.arange(count), n)
    blocks = [  # (row entries, their columns, their values, right-hand sides), row by row
        (
            np.column_stack([np.full(count, n), lam, nu.T]),
            np.column_stack([np.full(count, -1.0), np.arange(2, n + 1), np.ones((count, n))]),
            np.zeros(count),
        ),
        (np.column_stack([tasks, lam[sizes], nu.ravel()]), -np.ones((n * count, 3)), -best_mean),
    ]
    if helper is not None:
        blocks.append(
            (np.column_stack([lam[sizes], nu.ravel()]), -np.ones((n * count, 2)), -helper)
        )
    free = np.flatnonzero(np.isfinite(alone))
    blocks.append(
        (np.column_stack([free, np.full(len(free), n)]), -np.ones((len(free), 2)), -alone[free])
    )
    rows, cols, vals, upper, start = [], [], [], [], 0
    for columns, values, rhs in blocks:
        rhs = np.ravel(rhs)
        rows.append(np.repeat(np.arange(start, start + len(rhs)), columns.shape[1]))
        cols.append(columns.ravel())
        vals.append(values.ravel())
        upper.append(rhs)
        start += len(rhs)
    size = n + 1 + count + n * count
    matrix = coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(start, size)
    )
    objective = np.zeros(size)
    objective[:n], objective[n] = 1.0, max_sets
    bounds = np.column_stack([np.full(size, 0.0), np.full(size, np.inf)])
    bounds[:n, 0] = -np.inf
    return objective, matrix, np.concatenate(upper), bounds
