"""Stop measuring once the grouping is settled (config.affinity.stop_when_stable = N epochs).

Every epoch end of a TAG or CS run with N > 0 is checked (`grouping_check`): the groups of
each k are selected on the affinity measured so far. Once the grouping has been the same for N
checks, and while the checks' time stays within a share of the training time
(config.affinity.stable_check_share), each grouping's confidence is computed too, as at the
run's end (`with_confidence`: the block bootstrap over time with config.affinity.confidence).
`stop_reason` ends the run at the first epoch end where, for every k, the grouping has been the
same for N epoch ends (N + 1 checks in a row) and the confidences computed in those N + 1
checks, at least two of them including the latest, agree: the same verdict, spread by at most
config.affinity.stable_tolerance.

Checks take at most that share of the run's time: an epoch end that would exceed it is not
checked (`wants_check`), which ends every settled window there.

A check is a JSON record: {'epoch', 'selections': [{'max_groups', 'groups'} (+ 'confidence')],
'selection_seconds', 'seconds' (all of the check)} (+ 'solved', 'scored': resamples solved
exactly and scored against the groupings already found, when the confidence was computed). No
JAX here.
"""

import time
from typing import Optional

import numpy as np

from selection import confidence
from tag_jax import grouping


def grouping_check(epoch: int, tasks, onto_from: np.ndarray, *, max_groups, time_limit) -> dict:
    """The check record of an epoch end, its groups selected for each k on `onto_from` (T, T),
    the affinity so far onto t from u (affinity.json's matrix transposed)."""
    start = time.monotonic()
    selections = grouping.select_for_each_k(tasks, onto_from, max_groups, time_limit=time_limit)
    seconds = round(time.monotonic() - start, 3)
    return {
        "epoch": epoch,
        "selections": [{"max_groups": s["max_groups"], "groups": s["groups"]} for s in selections],
        "selection_seconds": seconds,
        "seconds": seconds,
    }


def with_confidence(epoch_check: dict, tasks, blocks: dict, confidence_config, time_limit) -> dict:
    """The check with each grouping's confidence, resampled as the run's end does
    (grouping.resampled_confidence); blocks: {'sums': (B, T, T) source x target, 'counts': (B,)}
    (methods.affinity_methods.affinity_blocks)."""
    start = time.monotonic()
    selections, resampling = grouping.resampled_confidence(
        tasks, epoch_check["selections"], blocks, confidence_config, time_limit
    )
    return {
        **epoch_check,
        "selections": [
            {**s, "confidence": c["confidence"]}
            for s, c in zip(epoch_check["selections"], selections)
        ],
        "solved": resampling["solved"],
        "scored": resampling["scored"],
        "seconds": round(epoch_check["seconds"] + time.monotonic() - start, 3),
    }


def _groupings(epoch_check: dict) -> list:
    """Each k's grouping, as a set of sets, at a check."""
    return [confidence.grouping_key(s["groups"]) for s in epoch_check["selections"]]


def settled_window(checks: list) -> list:
    """The latest checks, from the end back, at consecutive epochs and with the latest check's
    grouping at every k (the latest check alone at least; [] for no checks)."""
    window = checks[-1:]
    for earlier in reversed(checks[:-1]):
        if earlier["epoch"] != window[0]["epoch"] - 1 or _groupings(earlier) != _groupings(
            window[-1]
        ):
            break
        window.insert(0, earlier)
    return window


def confidences_agree(checks: list, tolerance: float) -> bool:
    """Whether the checks that computed a confidence, at least two of them and the latest among
    them, give every k the same verdict with confidences spread by at most `tolerance`."""
    if not checks or "confidence" not in checks[-1]["selections"][0]:
        return False
    shares = np.array(
        [
            [s["confidence"] for s in c["selections"]]
            for c in checks
            if "confidence" in c["selections"][0]
        ]
    )
    verdicts = {tuple(confidence.verdict(share) for share in row) for row in shares}
    spread = shares.max(axis=0) - shares.min(axis=0)
    return len(shares) >= 2 and len(verdicts) == 1 and spread.max() <= tolerance + 1e-12


def stop_reason(record: dict, *, epochs: int, tolerance: float) -> Optional[str]:
    """Why the run should stop now (a sentence for results.json's 'stop_reason'), or None: stop
    once the latest `epochs` + 1 checks of record['stability']['checks'] hold the same grouping
    at every k (settled_window) and the confidences computed in them agree
    (confidences_agree)."""
    checks = record.get("stability", {}).get("checks", [])
    if not epochs or len(settled_window(checks)) < epochs + 1:
        return None
    if not confidences_agree(checks[-(epochs + 1) :], tolerance):
        return None
    return (
        "the grouping settled: for every k the same groups at the last "
        f"{epochs + 1} epoch ends, and the same verdict with confidence within {tolerance:g} "
        f"(config.affinity.stop_when_stable={epochs})"
    )


def fits(checks: list, price: float, train_seconds: float, share: float) -> bool:
    """Whether the checks so far and one more costing `price` seconds take at most `share` of
    the training seconds (wall time, the checks included)."""
    return sum(c["seconds"] for c in checks) + price <= share * train_seconds


def wants_check(checks: list, train_seconds: float, share: float) -> bool:
    """Whether this epoch end may check its grouping, priced as the latest check's selection
    (the first check always runs). An epoch end left unchecked ends every settled window."""
    price = min((c["selection_seconds"] for c in checks[-1:]), default=0.0)
    return fits(checks, price, train_seconds, share)


def wants_confidence(
    checks: list, epochs: int, train_seconds: float, share: float, num_resamples: int
) -> bool:
    """Whether the latest check should compute its confidences: its grouping has been the same
    for at least `epochs` checks (earlier ones cannot be part of a stop), and it fits (`fits`),
    priced as the latest check that computed confidences, or before any as `num_resamples`
    times the latest check's selection (each resample is one more selection)."""
    rated = [c["seconds"] for c in checks if "confidence" in c["selections"][0]]
    price = rated[-1] if rated else num_resamples * checks[-1]["selection_seconds"]
    return len(settled_window(checks)) >= epochs and fits(checks, price, train_seconds, share)


def summary(affinity_config, checks: list) -> dict:
    """groups.json's 'stability': the settings and every epoch end's check."""
    return {
        "stop_when_stable": affinity_config.stop_when_stable,
        "stable_tolerance": affinity_config.stable_tolerance,
        "stable_check_share": affinity_config.stable_check_share,
        "checks": checks,
    }
