"""A grouping row's single-run confidence next to its seed stability (importable without JAX).

Each grouping run writes, per k, how sure it is of its grouping: groups.json's selection
'confidence' (the share of resamples of its own measurements that choose the grouping) and
'verdict' ('clear', 'uncertain', 'no preferred grouping'; tag_jax.grouping). The study adds
what one run cannot see: whether other seeds choose the same grouping. A row is *confident* when
most of its seeds' runs say 'clear', and *stable* when every seed chose the same grouping; the
report says where the two disagree.
"""

from typing import Optional

# Rows whose first stage is a grouping run writing groups.json (tag_jax.study.plan).
SEARCH_LABELS = ("tag", "cs", "hoa", "dmtg", "dmtg one-shot")
MISSING = "–"


def run_confidence(groups_record: Optional[dict], k: int) -> Optional[dict]:
    """{'confidence', 'verdict'} of a groups.json's selection for k (DMTG's one selection has
    k = its num_groups); None without a record, that selection or those fields."""
    selections = (groups_record or {}).get("selections") or []
    chosen = [s for s in selections if s.get("max_groups") == k]
    if not chosen or chosen[0].get("confidence") is None or not chosen[0].get("verdict"):
        return None
    return {"confidence": chosen[0]["confidence"], "verdict": chosen[0]["verdict"]}


def row_confidence(runs: list) -> Optional[dict]:
    """Over a row's seed runs (each with 'confidence': run_confidence or None): {'values',
    'verdicts'} per seed (None where a run has none), 'mean' of the known values and 'clear'
    (runs with the verdict 'clear'); None when no run has a confidence."""
    known = [r["confidence"] for r in runs if r.get("confidence")]
    if not known:
        return None
    return {
        "values": [(r.get("confidence") or {}).get("confidence") for r in runs],
        "verdicts": [(r.get("confidence") or {}).get("verdict") for r in runs],
        "mean": sum(c["confidence"] for c in known) / len(known),
        "clear": sum(c["verdict"] == "clear" for c in known),
    }


def disagreement(confidence: Optional[dict], groupings: list, seeds: int) -> Optional[str]:
    """What the report says when single runs and seeds disagree, else None (also with one seed,
    or a run without a confidence). groupings: the row's [{'groups', 'seeds'}], most frequent
    first."""
    if seeds < 2 or confidence is None or None in confidence["values"]:
        return None
    confident = confidence["clear"] > seeds / 2
    stable = groupings[0]["seeds"] == seeds
    if confident and not stable:
        return (
            f"single runs were confident (clear in {confidence['clear']}/{seeds} seeds), but the "
            f"seeds chose {len(groupings)} different groupings (the most frequent in "
            f"{groupings[0]['seeds']}/{seeds}): one run's confidence does not cover the change "
            "from seed to seed here; trust the seeds"
        )
    if stable and not confident:
        return (
            f"every seed chose the same grouping, but single runs were not confident (clear in "
            f"{confidence['clear']}/{seeds} seeds): the grouping held across seeds though each "
            "run's own measurements could not settle it"
        )
    return None


def format_confidence(row: dict) -> str:
    """The report's confidence cell: '0.92 clear' (one seed), '0.81 (clear 2/3)' (the mean over
    seeds and how many were clear), or '–' for a row without one."""
    confidence = row.get("confidence")
    if confidence is None:
        return MISSING
    if row["seeds"] == 1:
        return f"{confidence['mean']:.2f} {confidence['verdicts'][0]}"
    return f"{confidence['mean']:.2f} (clear {confidence['clear']}/{row['seeds']})"
