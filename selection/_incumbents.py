"""Incumbent partitions: starting points for large instances and local search.

Partitions are lists of served sets (bit masks over task indices); their penalised values
are ``_pricing.column_values`` with the master's PENALTY.
"""

import time

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from ._master import PENALTY, PRUNE_TOLERANCE
from ._pricing import column_values
from ._values import served_values

MERGE_FROM = 48  # merged_partitions: clusters to merge from, at most (unless k is larger)


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
    default 4 * max_sets but at most max(48, max_sets + 1) and n), repeatedly merge the two
    sets whose union loses the least value, down to 2 sets. Returns the partitions met with at
    most ``max_sets`` sets (lists of bit masks), fewest sets last. Unlike the tree's own cuts,
    the merges follow the objective: weakly related tasks are lumped into one set while strong
    groups stay apart (the best selection of k groups for many planted groups keeps k - 1 of
    them and lumps the rest)."""
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
