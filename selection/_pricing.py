"""Pricing: the served set with the largest reduced cost.

A column is a served set S (bit mask) with value c(S) = V(S) - penalty, V as in
``_values``. Given duals ``duals`` (n,), its reduced cost is c(S) - sum_{t in S}
duals[t]. ``price`` returns the allowed columns whose reduced cost exceeds
``threshold`` (best first, at most ``max_columns``) and an UPPER BOUND on
max(threshold, largest reduced cost of an allowed column), which the caller
turns into a valid bound on the whole problem even when pricing stops early.

Two pricers: ``EnumeratedPricer`` tabulates V for all 2^n sets once (small n, when the
table is complete before the deadline);
``SearchPricer`` (larger n) first tries a local search and, when that finds
nothing, runs a depth-first branch and bound over served sets, which either
returns the first improving column or proves that none exists.
"""

import time

import numpy as np

from ._values import served_values, values_from_sums

REDUCED_COST_STEP = 1e-12  # smallest rise that counts as a local-search move


INT64_BITS = 63  # task indices that fit a non-negative int64 bit mask


def mask_members(masks, n):
    """(len(masks), n) bool membership of bit masks (Python ints of any width,
    or an int64 array when n <= 63): entry [i, t] is bit t of masks[i]."""
    if n <= INT64_BITS:
        return (np.asarray(masks, dtype=np.int64)[:, None] >> np.arange(n)) & 1 == 1
    width = (n + 7) // 8
    raw = np.frombuffer(b"".join(int(m).to_bytes(width, "little") for m in masks), dtype=np.uint8)
    return np.unpackbits(raw.reshape(-1, width), axis=1, count=n, bitorder="little").astype(bool)


def _subset_sums(weights):
    """(2^n,) array whose entry at bit mask S is sum_{t in S} weights[t]."""
    sums = np.zeros(1)
    for w in weights:
        sums = np.concatenate([sums, sums + w])
    return sums


def column_values(off_gain, alone, masks, penalty):
    """Column values c(S) = V(S) - penalty for a list of bit masks."""
    return served_values(off_gain, alone, mask_members(masks, len(alone))) - penalty


TABLE_LOW_BITS = 15  # column_table is built in blocks sharing their higher bits


def column_table(off_gain, alone, penalty, deadline):
    """(2^n,) values c(S) of every column S (entry 0, the empty set: -inf), or None if the
    ``time.monotonic()`` deadline passes before the table is complete (a few seconds at n = 20)."""
    n = len(alone)
    low_bits = min(n, TABLE_LOW_BITS)
    low = mask_members(np.arange(1 << low_bits), n)
    low_sums = low.astype(float) @ off_gain
    blocks = []
    for high in range(1 << (n - low_bits)):
        if time.monotonic() > deadline:
            return None
        high_members = mask_members([high << low_bits], n)[0]
        members = low | high_members
        sums = low_sums + high_members.astype(float) @ off_gain
        if high == 0:  # skip the empty set
            blocks.append(np.array([-np.inf]))
            members, sums = members[1:], sums[1:]
        blocks.append(values_from_sums(alone, members, sums) - penalty)
    return np.concatenate(blocks)


class EnumeratedPricer:
    """Exact pricing by a table of all 2^n column values (``column_table``, n up to about 20)."""

    def __init__(self, values):
        self.values = values
        self.masks = np.arange(len(values), dtype=np.int64)
        self._allowed_for = None

    def _allowed_values(self, branching):
        """(2^n,) column values, -inf for the sets that break ``branching``
        (cached for the node being solved)."""
        if self._allowed_for is None or self._allowed_for[0] != branching:
            allowed = np.ones(len(self.masks), dtype=bool)
            for a, b in branching.together:
                allowed &= (self.masks >> a & 1) == (self.masks >> b & 1)
            for a, b in branching.apart:
                allowed &= (self.masks >> a & self.masks >> b & 1) == 0
            self._allowed_for = (branching, np.where(allowed, self.values, -np.inf))
        return self._allowed_for[1]

    def price(self, duals, threshold, branching, deadline, max_columns, hints=()):
        reduced = self._allowed_values(branching) - _subset_sums(duals)
        improving = np.flatnonzero(reduced > threshold)
        if len(improving) > max_columns:
            improving = improving[
                np.argpartition(-reduced[improving], max_columns - 1)[:max_columns]
            ]
        best_first = improving[np.argsort(-reduced[improving], kind="stable")]
        columns = [(int(s), float(self.values[s])) for s in best_first]
        return columns, max(threshold, float(reduced.max()))


class SearchPricer:
    """Pricing by local search, then exact depth-first branch and bound.

    Branch and bound: a node fixes some tasks into S (``chosen``) and leaves others open. Bound:
    for each group size m, every task t may at best get the mean of the m - 1
    largest gains onto t from a group holding ``chosen`` and t (its own best
    helpers, computed from rows sorted once); chosen tasks count always, open
    tasks only if positive and at most m - |chosen| of them (S is inside the
    group). An open task with no positive value for any m is dropped: serving
    it cannot beat leaving it a helper, so some best set avoids it.
    Singletons are priced directly, the search only counts sets of >= 2.
    """

    def __init__(self, off_gain, alone, penalty):
        n = len(alone)
        self.n, self.off_gain, self.alone, self.penalty = n, off_gain, alone, penalty
        masked = off_gain.copy()
        np.fill_diagonal(masked, -np.inf)
        self.order = np.argsort(-masked, axis=1, kind="stable")[:, : n - 1]
        self.ranked = np.take_along_axis(off_gain, self.order, axis=1)
        self.sizes = np.arange(n + 1)

    def _member_values(self, chosen, duals):
        """(n, n + 1): best mean onto t in a group of m tasks holding chosen and t,
        minus duals[t]; -inf where no such group exists (m < 2 among them)."""
        n, rows = self.n, np.arange(self.n)[:, None]
        forced = chosen.sum() - chosen
        forced_total = self.off_gain @ chosen
        free = ~chosen[self.order]
        first_free = np.argsort(~free, axis=1, kind="stable")
        free_gains = np.take_along_axis(np.where(free, self.ranked, 0.0), first_free, axis=1)
        best_free = np.concatenate([np.zeros((n, 1)), np.cumsum(free_gains, axis=1)], axis=1)
        picked = self.sizes[None, :] - 1 - forced[:, None]
        valid = (picked >= 0) & (picked <= free.sum(axis=1)[:, None]) & (self.sizes >= 2)
        totals = forced_total[:, None] + best_free[rows, np.clip(picked, 0, n - 1)]
        means = totals / np.maximum(self.sizes - 1, 1)
        return np.where(valid, means - duals[:, None], -np.inf)

    def _bound(self, values, chosen, open_tasks):
        """Upper bound on the reduced cost of any set in the node's subtree."""
        fixed = np.where(chosen[:, None], values, 0.0).sum(axis=0)
        gains = np.sort(np.where(open_tasks[:, None], np.maximum(values, 0.0), 0.0), axis=0)[::-1]
        best_open = np.concatenate([np.zeros((1, self.n + 1)), np.cumsum(gains, axis=0)])
        room = np.clip(self.sizes - chosen.sum(), 0, self.n)
        return float(np.max(fixed + best_open[room, self.sizes])) - self.penalty

    def _reduced(self, masks, duals):
        """(values, reduced costs) of the columns ``masks``."""
        members = mask_members(masks, self.n)
        return self._reduced_members(members, members.astype(float) @ self.off_gain, duals)

    def _reduced_members(self, members, sums, duals):
        """(values, reduced costs) of the columns given as (B, n) bool rows and
        their column sums (B, n) = members @ off_gain."""
        values = values_from_sums(self.alone, members, sums) - self.penalty
        return values, values - members @ duals

    def _local_search(self, duals, threshold, classes, blocked, starts, deadline):
        """{mask: (value, reduced cost)} of the improving columns among the
        starts and the sets reached from them by best-improvement moves (add
        or drop one class of glued tasks), until ``deadline``. Moves are bool
        rows whose column sums are the set's plus or minus the class's."""
        class_members, blocked_members = (
            mask_members(classes, self.n),
            mask_members(blocked, self.n),
        )
        class_sums = class_members.astype(float) @ self.off_gain
        found = {}
        for mask in starts:
            if time.monotonic() > deadline:
                break
            members = mask_members([mask], self.n)[0]
            sums = members.astype(float) @ self.off_gain
            value, current = (
                float(x[0]) for x in self._reduced_members(members[None], sums[None], duals)
            )
            while True:
                if current > threshold:
                    found[mask] = (value, current)
                # drop a class of the set, or add one that conflicts with none in it
                dropping = (class_members & members).any(axis=1)
                movable = np.flatnonzero(dropping | ~(blocked_members & members).any(axis=1))
                moves = members ^ class_members[movable]
                keep = moves.any(axis=1)
                movable, moves = movable[keep], moves[keep]
                if not len(moves) or time.monotonic() > deadline:
                    break
                signs = np.where(dropping[movable], -1.0, 1.0)
                values, reduced = self._reduced_members(
                    moves, sums + signs[:, None] * class_sums[movable], duals
                )
                best = int(np.argmax(reduced))
                if reduced[best] <= current + REDUCED_COST_STEP:
                    break
                mask, members = mask ^ classes[movable[best]], moves[best]
                sums = members.astype(float) @ self.off_gain
                value, current = float(values[best]), float(reduced[best])
        return found

    def _branch_and_bound(self, duals, threshold, classes, conflicts, deadline):
        """(first improving set of >= 2 tasks as {mask: value}, or {}; upper
        bound on max(threshold, best reduced cost of such sets), infinite if
        stopped at a column)."""
        n = self.n
        members = mask_members(classes, n)
        stack = [(0, (1 << len(classes)) - 1, np.inf, None)]
        while stack:
            chosen_mask, open_classes, parent_bound, values = stack.pop()
            if parent_bound <= threshold:
                continue
            if time.monotonic() > deadline:
                return {}, max([parent_bound] + [entry[2] for entry in stack])
            chosen = mask_members([chosen_mask], n)[0]
            if values is None:
                values = self._member_values(chosen, duals)
            open_list = [
                i
                for i in range(len(classes))
                if open_classes >> i & 1
                and not (
                    classes[i] & (classes[i] - 1) == 0
                    and values[classes[i].bit_length() - 1].max() <= 0.0
                )
            ]
            if not open_list:
                continue
            bound = self._bound(values, chosen, members[open_list].any(axis=0))
            if bound <= threshold:
                continue
            pick = open_list[int(np.argmax([values[members[i]].max() for i in open_list]))]
            rest = sum(1 << i for i in open_list) & ~(1 << pick)
            stack.append((chosen_mask, rest, bound, values))
            with_pick = chosen_mask | classes[pick]
            if with_pick & (with_pick - 1):
                value, reduced = self._reduced([with_pick], duals)
                if reduced[0] > threshold:
                    return {with_pick: float(value[0])}, np.inf
            stack.append((with_pick, rest & ~conflicts[pick], bound, None))
        return {}, threshold

    def price(self, duals, threshold, branching, deadline, max_columns, hints=()):
        """Local search from ``hints`` (the master's columns in use) and from
        every class alone (so every singleton is priced); only if that finds
        nothing, the exact search. The bound is never worse than the root
        node's bound of the search."""
        classes = branching.classes(self.n)
        conflicts = branching.conflicts(classes)
        blocked = [
            sum(c for j, c in enumerate(classes) if conflict >> j & 1) for conflict in conflicts
        ]
        singles = [c for c in classes if c & (c - 1) == 0]
        nobody = np.zeros(self.n, dtype=bool)
        root_bound = max(
            [threshold, self._bound(self._member_values(nobody, duals), nobody, ~nobody)]
            + list(self._reduced(singles, duals)[1] if singles else [])
        )
        found = self._local_search(
            duals, threshold, classes, blocked, list(dict.fromkeys(list(hints) + classes)), deadline
        )
        if found:
            ranked = [
                mask
                for mask, _ in sorted(found.items(), key=lambda item: -item[1][1])[:max_columns]
            ]
            values = column_values(
                self.off_gain, self.alone, ranked, self.penalty
            )  # not summed incrementally
            return list(zip(ranked, values.tolist())), root_bound
        found, bound = self._branch_and_bound(duals, threshold, classes, conflicts, deadline)
        return list(found.items()), min(bound, root_bound)
