"""How sure is a grouping? Resampling summaries and the verdict (numpy only).

A grouping is a list of groups, each a list of task names. Two groupings are
equal when they hold the same groups, each group compared as a set of tasks
(order of groups and of members does not matter).

``grouping_confidence`` summarises the groupings chosen on resamples of a run
(bootstrap resamples of the affinity, of validation examples, or samples of an
assignment) against the reported grouping: the share of samples that choose
it, the other groupings chosen with their shares, and how often each pair of
tasks shares a group. ``verdict`` turns the share into what a user can act on.

``moving_block_indices`` and ``resampled_means`` are the block bootstrap over
time: a run keeps sums of its affinity over blocks of consecutive measured
steps (and each block's step count); a resample strings together randomly
chosen windows of ``block_length`` consecutive blocks, and its mean is the
sum of the chosen block sums over the sum of their counts.
"""

import time

import numpy as np

from .groups import select_groups

# Verdict thresholds on ``confidence`` (share of resamples choosing the reported grouping),
# chosen on TAG runs of seed 0 by benchmarks/grouping_confidence.py and checked on seed 3
# (docs/confidence.md): clear at 0.9 and above (the synthetic planted groups at k = 3: 0.98; two
# of three planted groups merged at k = 2, which pair changing from seed to seed: 0.86), no
# preferred grouping below 0.45 (nine exchangeable copies of one task: 0.02 and 0.05).
CLEAR_AT = 0.9
PREFERRED_AT = 0.45

VERDICTS = ("clear", "uncertain", "no preferred grouping")


def grouping_key(groups) -> frozenset:
    """The grouping as a frozenset of frozensets of task names."""
    return frozenset(frozenset(group) for group in groups)


def _ordered(key, position) -> list[list]:
    """A grouping key as lists: members in task order, groups by their first members."""
    groups = [sorted(group, key=position.__getitem__) for group in key]
    return sorted(groups, key=lambda group: [position[t] for t in group])


def co_membership(groupings, tasks) -> np.ndarray:
    """(T, T) share of ``groupings`` in which tasks i and j share some group
    (rows and columns in ``tasks`` order; the diagonal is the share in which
    the task is in some group)."""
    position = {t: i for i, t in enumerate(tasks)}
    together = np.zeros((len(tasks), len(tasks)))
    for groups in groupings:
        member = np.zeros((len(groups), len(tasks)), dtype=bool)
        for g, group in enumerate(groups):
            member[g, [position[t] for t in group]] = True
        together += (member.T.astype(float) @ member) > 0
    return together / max(len(groupings), 1)


def grouping_confidence(reported, sampled, tasks=None) -> dict:
    """Summary of ``sampled`` groupings against the ``reported`` one.

    Returns {"confidence": share of samples equal to ``reported``,
    "alternatives": [{"groups", "share"}, ...] the other groupings sampled,
    by share (descending; ties in task order), "co_membership": (T, T) nested
    list from ``co_membership`` in ``tasks`` order (default: the order of
    first appearance in ``reported``), "num_samples", "num_distinct": distinct
    groupings sampled}.
    """
    if tasks is None:
        tasks = list(dict.fromkeys(t for group in reported for t in group))
    position = {t: i for i, t in enumerate(tasks)}
    reported_key = grouping_key(reported)
    counts: dict[frozenset, int] = {}
    for groups in sampled:
        key = grouping_key(groups)
        counts[key] = counts.get(key, 0) + 1
    num = len(sampled)
    others = [(_ordered(key, position), n) for key, n in counts.items() if key != reported_key]
    others.sort(key=lambda item: (-item[1], [[position[t] for t in g] for g in item[0]]))
    return {
        "confidence": counts.get(reported_key, 0) / num if num else 0.0,
        "alternatives": [{"groups": groups, "share": n / num} for groups, n in others],
        "co_membership": co_membership(sampled, tasks).tolist(),
        "num_samples": num,
        "num_distinct": len(counts),
    }


def verdict(confidence, clear_at=CLEAR_AT, preferred_at=PREFERRED_AT) -> str:
    """'clear' (confidence >= clear_at), 'uncertain' (>= preferred_at) or
    'no preferred grouping'."""
    if not 0.0 <= preferred_at <= clear_at <= 1.0:
        raise ValueError(f"need 0 <= preferred_at <= clear_at <= 1, got {preferred_at}, {clear_at}")
    if confidence >= clear_at:
        return "clear"
    if confidence >= preferred_at:
        return "uncertain"
    return "no preferred grouping"


def _grouping_text(groups) -> str:
    return " ".join("{" + ", ".join(group) + "}" for group in groups)


def explanation(summary: dict, max_alternatives: int = 2, **thresholds) -> str:
    """One line saying what the verdict of a ``grouping_confidence`` summary
    means; ``thresholds`` go to ``verdict``."""
    share = summary["confidence"]
    num = summary["num_samples"]
    chosen = f"chosen in {share:.0%} of {num} resamples"
    said = verdict(share, **thresholds)
    if said == "clear":
        return f"clear: {chosen}; the grouping survives resampling"
    if said == "uncertain":
        named = [
            f"{_grouping_text(a['groups'])} ({a['share']:.0%})"
            for a in summary["alternatives"][:max_alternatives]
        ]
        return f"uncertain: {chosen}; also chosen: " + "; ".join(named or ["none"])
    return (
        f"no preferred grouping: {chosen} ({summary['num_distinct']} distinct groupings); "
        "the data favour no grouping: train the tasks together or decide by other criteria"
    )


MIN_WINDOWS = 4  # windows a resample strings together, at least (block_length is clipped)


def window_length(num_blocks, block_length) -> int:
    """The window length used: block_length clipped to [1, num_blocks // MIN_WINDOWS], so that a
    resample is made of at least MIN_WINDOWS windows (a window as long as the run would draw the
    run itself every time, and show no variation at all)."""
    return max(1, min(int(block_length), num_blocks // MIN_WINDOWS))


def moving_block_indices(num_blocks, block_length, num_resamples, rng) -> np.ndarray:
    """(num_resamples, num_blocks) block indices of a moving-block bootstrap: each row strings
    together windows of ``window_length(num_blocks, block_length)`` consecutive blocks whose
    starts are drawn uniformly with replacement, cut to ``num_blocks`` entries. rng: a numpy
    Generator."""
    length = window_length(num_blocks, block_length)
    windows = -(-num_blocks // length)
    starts = rng.integers(0, num_blocks - length + 1, size=(num_resamples, windows))
    runs = starts[:, :, None] + np.arange(length)
    return runs.reshape(num_resamples, -1)[:, :num_blocks]


def resampled_means(block_sums, block_counts, indices) -> np.ndarray:
    """(R, ...) resampled means: for each row of ``indices`` (R, n), the sum of
    the chosen ``block_sums`` (B, ...) over the sum of their ``block_counts`` (B,)."""
    sums = np.asarray(block_sums, np.float64)
    counts = np.asarray(block_counts, np.float64)
    total = sums[indices].sum(axis=1)
    return total / counts[indices].sum(axis=1).reshape((-1,) + (1,) * (sums.ndim - 1))


def block_bootstrap_means(block_sums, block_counts, num_resamples, block_length, seed):
    """(num_resamples, ...) moving-block bootstrap means of blocks in time order
    (blocks with a zero count are dropped first); deterministic for ``seed``."""
    counts = np.asarray(block_counts, np.float64)
    kept = counts > 0
    if not kept.any():
        raise ValueError("no measured steps to resample")
    rng = np.random.default_rng(seed)
    indices = moving_block_indices(int(kept.sum()), block_length, num_resamples, rng)
    return resampled_means(np.asarray(block_sums)[kept], counts[kept], indices)


def grouping_scores(candidates, tasks, tables, objective="maximize", singletons="forbid"):
    """(R, C) score of each candidate grouping on each table, as ``select_groups`` scores a
    selection: the mean over tasks of the score of the group serving each task best.

    tables: (R, T, T) with tables[r][t][u] = score ONTO t FROM u; candidates: groupings of the
    ``tasks`` names; singletons: 'forbid' (a one-task group scores -inf) or 'diagonal'."""
    position = {t: i for i, t in enumerate(tasks)}
    tables = np.asarray(tables, np.float64)
    off = tables * (1 - np.eye(tables.shape[-1]))
    scores = np.empty((len(tables), len(candidates)))
    for c, groups in enumerate(candidates):
        member = np.zeros((len(groups), len(tasks)))
        for g, group in enumerate(groups):
            member[g, [position[t] for t in group]] = 1.0
        size = member.sum(axis=1)
        gains = np.einsum("rtu,gu->rgt", off, member) / np.maximum(size - 1, 1)[:, None]
        if singletons == "diagonal":
            alone = np.diagonal(tables, axis1=1, axis2=2)[:, None, :]
            gains = np.where((size == 1)[:, None], alone, gains)
        else:
            gains = np.where((size == 1)[:, None], -np.inf, gains)
        gains = np.where(member > 0, gains, np.nan)
        best = np.nanmax(gains, axis=1) if objective == "maximize" else np.nanmin(gains, axis=1)
        scores[:, c] = best.mean(axis=1)
    return scores


def _best_candidates(candidates, tasks, tables, objective, singletons):
    """(R,) index of the best of ``candidates`` on each table (ties: the earliest) and (R,) its
    score in maximisation form (negated when minimising)."""
    scores = grouping_scores(candidates, tasks, tables, objective, singletons)
    gains = scores if objective == "maximize" else -scores
    best = np.argmax(gains, axis=1)
    return best, gains[np.arange(len(gains)), best]


def resampled_selections(
    tasks,
    tables,
    reported,
    *,
    objective="maximize",
    singletons="forbid",
    time_budget=30.0,
    time_limit=60.0,
):
    """The grouping chosen on each table for each k, within ``time_budget`` seconds.

    tables: (R, T, T) resampled score tables (onto t from u); reported: {k: the reported
    grouping}. Each table is solved for each k with ``select_groups`` (limited to ``time_limit``
    and to what is left of the budget) while what is left exceeds the longest solve so far; an
    unproven solve yields to a strictly better candidate. Once the budget is spent, a table
    takes the best candidate for k: the reported grouping or one chosen on an earlier table
    (ties: the earliest found). Returns ({k: [grouping chosen on each table]}, usage:
    {"seconds", "cpu_seconds" (this process's), "time_budget", "solved": (table, k) solved,
    "scored": (table, k) that took the best candidate, "unproven": solves stopped by their
    time limit}).
    """
    start, cpu_start = time.monotonic(), time.process_time()
    tables = np.asarray(tables, np.float64)
    candidates = {k: [[list(g) for g in groups]] for k, groups in reported.items()}
    chosen = {k: [] for k in reported}
    longest, solved, unproven = 0.0, 0, 0
    for table in tables:
        for k in reported:
            left = time_budget - (time.monotonic() - start)
            best, gain = _best_candidates(candidates[k], tasks, table[None], objective, singletons)
            groups = candidates[k][best[0]]
            if left > longest:
                began = time.monotonic()
                result = select_groups(
                    (list(tasks), table),
                    max_groups=k,
                    objective=objective,
                    singletons=singletons,
                    time_limit=min(time_limit, left),
                )
                longest = max(longest, time.monotonic() - began)
                solved += 1
                unproven += result.gap > 0
                solved_gain = result.score if objective == "maximize" else -result.score
                # an unproven solve yields to a strictly better candidate
                if result.gap == 0 or gain[0] <= solved_gain + 1e-9 * max(1.0, abs(solved_gain)):
                    groups = [list(g) for g in result.groups]
                if grouping_key(groups) not in {grouping_key(c) for c in candidates[k]}:
                    candidates[k].append(groups)
            chosen[k].append(groups)
    usage = {
        "seconds": time.monotonic() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "time_budget": time_budget,
        "solved": solved,
        "scored": len(tables) * len(reported) - solved,
        "unproven": unproven,
    }
    return chosen, usage
