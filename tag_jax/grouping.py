"""From pairwise scores to `groups.json`: selection for each k, written with a picture.

groups.json: {"method", "tasks", "objective", "selections": [{"max_groups": k,
"groups": [[task, ...], ...], "score", "assignment": {task: [its serving group]},
"gap"}, ...]} — the same for TAG, CS, HOA and DMTG, so the study and the
selection tools treat every method alike.
"""

import os

import numpy as np

import selection
from tag_jax import plots, reporting


def select_for_each_k(tasks, scores_onto_from: np.ndarray, max_groups, *, objective="maximize",
                      singletons="forbid", time_limit=60.0) -> list[dict]:
  """[{'max_groups': k, **Selection.to_dict()}] for each k; scores[t][u] = onto t from u."""
  table = (list(tasks), np.asarray(scores_onto_from, np.float64))
  return [{"max_groups": int(k),
           **selection.select_groups(table, max_groups=int(k), objective=objective,
                                     singletons=singletons, time_limit=time_limit).to_dict()}
          for k in max_groups]


def write_groups(workdir: str, method: str, tasks, selections: list[dict], **extra) -> dict:
  record = {"method": method, "tasks": list(tasks), "selections": selections, **extra}
  reporting.write_json_atomic(os.path.join(workdir, "groups.json"), record)
  plots.groupings(record, os.path.join(workdir, "groups.png"))
  return record


def groups_from_affinity(workdir: str, affinity_record: dict, selection_config) -> dict:
  """TAG/CS: select on the run's mean affinity (transposed to onto-from) and write groups.json."""
  tasks = affinity_record["tasks"]
  onto_from = np.asarray(affinity_record["matrix"]).T
  selections = select_for_each_k(tasks, onto_from, selection_config.max_groups,
                                 time_limit=selection_config.time_limit)
  return write_groups(workdir, affinity_record["method"], tasks, selections,
                      objective="maximize", scores="affinity.json (transposed: onto t from u)")
