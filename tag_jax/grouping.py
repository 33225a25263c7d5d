"""From pairwise scores to `groups.json`: selection for each k, written with a picture.

groups.json: {"method", "tasks", "objective", "selections": [{"max_groups": k,
"groups": [[task, ...], ...], "score", "assignment": {task: [its serving group]},
"gap"}, ...]} — the same for TAG, CS, HOA and DMTG, so the study and the
selection tools treat every method alike. A method that resamples its scores adds to each
selection "confidence" (share of resamples choosing its groups), "alternatives" (the other
groupings chosen, with their shares), "co_membership" (T x T share of resamples in which two
tasks share a group), "num_samples", "num_distinct" and "verdict" (selection.confidence), and
to the record "resampling" (how: settings and the time used); `grouping_confidence.png`
pictures the co-membership.
"""

import os

import ml_collections
import numpy as np

import selection
from selection import confidence
from tag_jax import config_checks, plots, reporting


def default_config() -> ml_collections.ConfigDict:
    """config.selection: group selection after TAG, CS and HOA."""
    cfg = ml_collections.ConfigDict()
    cfg.max_groups = (2, 3)  # select groups for each of these k
    cfg.time_limit = 60.0  # seconds per k before reporting a bound gap
    return cfg


def confidence_config() -> ml_collections.ConfigDict:
    """config.affinity.confidence: the block bootstrap over time behind each grouping's
    confidence (docs/confidence.md)."""
    cfg = ml_collections.ConfigDict()
    cfg.num_resamples = 100  # resamples of the run's affinity (0 = no confidence)
    cfg.block_length = 4  # consecutive blocks of measured steps drawn together
    cfg.seed = 0  # the resamples drawn; results are deterministic for a seed
    # Seconds for all resamples and k: tables are solved exactly while time is left, then the
    # rest take the best grouping found so far (groups.json 'resampling' says how many).
    cfg.time_budget = 30.0
    return cfg


BLOCK = config_checks.Block(
    "selection",
    default_config,
    {"max_groups": config_checks.KS, "time_limit": config_checks.number(0, low_open=True)},
)


def select_for_each_k(
    tasks,
    scores_onto_from: np.ndarray,
    max_groups,
    *,
    objective="maximize",
    singletons="forbid",
    time_limit=60.0,
) -> list[dict]:
    """[{'max_groups': k, **Selection.to_dict()}] for each k; scores[t][u] = onto t from u."""
    table = (list(tasks), np.asarray(scores_onto_from, np.float64))
    return [
        {
            "max_groups": int(k),
            **selection.select_groups(
                table,
                max_groups=int(k),
                objective=objective,
                singletons=singletons,
                time_limit=time_limit,
            ).to_dict(),
        }
        for k in max_groups
    ]


def with_confidence(selections: list[dict], tasks, sampled: dict) -> list[dict]:
    """Each selection with grouping_confidence's fields and its verdict; sampled: {k: the
    groupings chosen on the resamples}."""
    result = []
    for s in selections:
        summary = confidence.grouping_confidence(s["groups"], sampled[s["max_groups"]], tasks)
        result.append({**s, **summary, "verdict": confidence.verdict(summary["confidence"])})
    return result


def resampled_confidence(
    tasks, selections: list[dict], blocks: dict, confidence_config, time_limit
):
    """(selections with confidence, groups.json's 'resampling') from a moving-block bootstrap of
    the affinity's blocks: blocks = {'sums': (B, T, T) source x target, 'counts': (B,)}."""
    cfg = confidence_config
    means = confidence.block_bootstrap_means(
        blocks["sums"], blocks["counts"], cfg.num_resamples, cfg.block_length, cfg.seed
    )
    sampled, usage = confidence.resampled_selections(
        tasks,
        means.transpose(0, 2, 1),  # onto t from u
        {s["max_groups"]: s["groups"] for s in selections},
        time_budget=cfg.time_budget,
        time_limit=time_limit,
    )
    num_blocks = int((np.asarray(blocks["counts"]) > 0).sum())
    resampling = {
        "method": "moving-block bootstrap over time of the affinity",
        "num_resamples": cfg.num_resamples,
        "block_length": cfg.block_length,
        "window_length": confidence.window_length(num_blocks, cfg.block_length),
        "seed": cfg.seed,
        "blocks": num_blocks,
        **usage,
    }
    return with_confidence(selections, tasks, sampled), resampling


def write_groups(workdir: str, method: str, tasks, selections: list[dict], **extra) -> dict:
    """groups.json and groups.png; grouping_confidence.png when the selections have a confidence."""
    record = {"method": method, "tasks": list(tasks), "selections": selections, **extra}
    reporting.write_json_atomic(os.path.join(workdir, "groups.json"), record)
    plots.save(plots.groupings(record), os.path.join(workdir, "groups.png"))
    if all("co_membership" in s for s in selections):
        plots.save(
            plots.grouping_confidence(record), os.path.join(workdir, "grouping_confidence.png")
        )
    return record


SUMMARY_KEYS = ("max_groups", "groups", "score", "gap", "confidence", "verdict")


def selection_summary(groups_record: dict) -> list[dict]:
    """groups.json's selections without the per-task assignment and resampling detail: k,
    groups, score, gap and, when resampled, confidence, verdict and the leading alternatives."""
    return [
        {
            **{key: s[key] for key in SUMMARY_KEYS if key in s},
            **({"alternatives": s["alternatives"][:2]} if "alternatives" in s else {}),
            **({"num_samples": s["num_samples"]} if "num_samples" in s else {}),
            **({"num_distinct": s["num_distinct"]} if "num_distinct" in s else {}),
        }
        for s in groups_record["selections"]
    ]


def groups_from_affinity(
    workdir: str,
    affinity_record: dict,
    max_groups,
    time_limit,
    blocks=None,
    confidence_config=None,
    **extra,
) -> dict:
    """TAG/CS: select on the run's mean affinity (transposed to onto-from) and write groups.json;
    with blocks (resampled_confidence) and confidence_config.num_resamples > 0, each
    selection's confidence too. `extra`: more top-level fields of groups.json."""
    tasks = affinity_record["tasks"]
    onto_from = np.asarray(affinity_record["matrix"]).T
    selections = select_for_each_k(tasks, onto_from, max_groups, time_limit=time_limit)
    if blocks is not None and confidence_config is not None and confidence_config.num_resamples:
        selections, extra["resampling"] = resampled_confidence(
            tasks, selections, blocks, confidence_config, time_limit
        )
    return write_groups(
        workdir,
        affinity_record["method"],
        tasks,
        selections,
        objective="maximize",
        scores="affinity.json (transposed: onto t from u)",
        **extra,
    )
