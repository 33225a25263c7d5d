"""From pairwise scores to `groups.json`: selection for each k, written with a picture.

groups.json: {"method", "tasks", "objective", "selections": [{"max_groups": k,
"groups": [[task, ...], ...], "score", "assignment": {task: [its serving group]},
"gap"}, ...]} — the same for TAG, CS, HOA and DMTG, so the study and the
selection tools treat every method alike.
"""

import os

import ml_collections
import numpy as np

import selection
from tag_jax import plots, reporting
from tag_jax.errors import UserError


def default_config() -> ml_collections.ConfigDict:
    """config.selection: group selection after TAG, CS and HOA."""
    cfg = ml_collections.ConfigDict()
    cfg.max_groups = (2, 3)  # select groups for each of these k
    cfg.time_limit = 60.0  # seconds per k before reporting a bound gap
    return cfg


def validate_selection(selection_config) -> None:
    """UserError for k < 1, no k, or a time limit that is not positive."""
    ks = tuple(selection_config.max_groups)
    if not ks or min(ks) < 1:
        raise UserError(f"config.selection.max_groups must be k values >= 1, got {ks}")
    if not selection_config.time_limit > 0:
        raise UserError(
            f"config.selection.time_limit must be > 0 seconds, got {selection_config.time_limit}"
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


def write_groups(workdir: str, method: str, tasks, selections: list[dict], **extra) -> dict:
    record = {"method": method, "tasks": list(tasks), "selections": selections, **extra}
    reporting.write_json_atomic(os.path.join(workdir, "groups.json"), record)
    plots.save(plots.groupings(record), os.path.join(workdir, "groups.png"))
    return record


def selection_summary(groups_record: dict) -> list[dict]:
    """groups.json's selections without the per-task assignment: k, groups, score, gap."""
    return [
        {key: s[key] for key in ("max_groups", "groups", "score", "gap")}
        for s in groups_record["selections"]
    ]


def groups_from_affinity(workdir: str, affinity_record: dict, max_groups, time_limit) -> dict:
    """TAG/CS: select on the run's mean affinity (transposed to onto-from) and write groups.json."""
    tasks = affinity_record["tasks"]
    onto_from = np.asarray(affinity_record["matrix"]).T
    selections = select_for_each_k(tasks, onto_from, max_groups, time_limit=time_limit)
    return write_groups(
        workdir,
        affinity_record["method"],
        tasks,
        selections,
        objective="maximize",
        scores="affinity.json (transposed: onto t from u)",
    )
