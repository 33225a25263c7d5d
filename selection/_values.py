"""Value of serving a set of tasks with one group (maximisation form).

All functions take ``off_gain``: an (n, n) array with ``off_gain[t, u]`` = the
score onto task t from task u, to be MAXIMISED (a minimisation table is
negated by the caller), with a zero diagonal; and ``alone``: an (n,) array with
the score of the singleton group {t} (``-inf`` where singletons are forbidden).

A group G scores member t by the mean of ``off_gain[t, u]`` over u in G,
u != t. The tasks a group *serves* (S) may be fewer than its members: the
others are helpers, served by another group. With column sums
c[h] = sum_{t in S} off_gain[t, h] and W = the sum within S, a group S + H
serves S a total of (W + sum_{h in H} c[h]) / (|S| - 1 + |H|). For |S| >= 2
the best H is {h outside S : c[h] > v} where v is the best total itself, the
root of W + sum_h max(c[h] - v, 0) = (|S| - 1) v: adding a helper raises the
mean exactly when its c exceeds the mean. Newton's method from v = W / (|S| - 1)
finds that root in a few steps, each a fixed-point update of the helper set.
A single served task takes its best partner (or stands alone, if allowed).
"""

import numpy as np

LOWEST = np.finfo(float).min  # stands for "not a candidate helper"


def without_diagonal(gain):
    """(n, n) float copy of ``gain`` with a zero diagonal."""
    off = np.array(gain, dtype=float)
    np.fill_diagonal(off, 0.0)
    return off


def values_from_sums(alone, members, sums):
    """(B,) best total for served sets ``members`` (B, n) bool, given their
    column sums ``sums`` (B, n) = members @ off_gain."""
    size = members.sum(axis=1)
    within = np.einsum("ij,ij->i", sums, members)
    outside = np.where(members, LOWEST, sums)  # finite, so that 0 * outside = 0
    values = np.where(size >= 2, within / np.maximum(size - 1, 1), outside.max(axis=1))
    active = np.flatnonzero(size >= 2)
    rows, base, slots, current = outside[active], within[active], size[active] - 1, values[active]
    while active.size:  # Newton steps on the helper set, each raising the mean
        helping = rows > current[:, None]
        new = (base + np.einsum("ij,ij->i", rows, helping)) / (slots + helping.sum(axis=1))
        rising = new > current
        active, rows, base, slots, current = (
            active[rising],
            rows[rising],
            base[rising],
            slots[rising],
            new[rising],
        )
        values[active] = current
    task = np.argmax(members, axis=1)
    return np.where((size == 1) & (alone[task] >= values), alone[task], values)


def served_values(off_gain, alone, members):
    """(B,) best total score of each served set (rows of ``members``, non-empty)."""
    return values_from_sums(alone, members, members.astype(float) @ off_gain)


def best_group(off_gain, alone, served):
    """(value, group) for one served set: served (n,) bool; group (n,) bool is
    the served tasks plus the fewest helpers reaching the best value."""
    sums = off_gain.T @ served.astype(float)
    value = values_from_sums(alone, served[None, :], sums[None, :])[0]
    outside = np.where(served, -np.inf, sums)
    if served.sum() >= 2:
        return float(value), served | (outside > value)
    if value == alone[served][0]:
        return float(value), served.copy()
    return float(value), served | (np.arange(len(served)) == np.argmax(outside))
