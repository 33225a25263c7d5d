"""HOA's outputs of a 'pairs' run (tag_jax.methods.groups): pairs.json, the pairwise table of every
pair and single-task network, and groups.json, the HOA selection on it."""

import os

import numpy as np

from tag_jax import grouping, reporting


def pairwise_table(task_names, networks, values) -> dict:
    """{t: {u: values[network {t, u}, t]}}, diagonal from the single-task networks; values
    (G, T)."""
    index = {t: i for i, t in enumerate(task_names)}
    table = {t: {} for t in task_names}
    for g, members in enumerate(networks):
        for t in members:
            partner = next((u for u in members if u != t), t)
            table[t][partner] = float(values[g][index[t]])
    return {t: {u: table[t][u] for u in task_names} for t in task_names}


def pairs_record(task_names, networks, evaluations: dict) -> dict:
    """pairs.json from {'validation', 'test'} -> {'task_loss', 'task_accuracy'} (G, T) each."""
    record = {"tasks": list(task_names)}
    for split, result in evaluations.items():
        record[f"{split}_loss"] = pairwise_table(task_names, networks, result["task_loss"])
        error = 100.0 * (1.0 - np.asarray(result["task_accuracy"]))
        record[f"{split}_error"] = pairwise_table(task_names, networks, error)
    record["orientation"] = (
        "scores[t][u] = value of t in the network trained on {t, u}; diagonal = t alone"
    )
    return record


def write_pairs_outputs(ctx, final, *, networks, score, max_groups, time_limit) -> dict:
    """pairs.json, then HOA's groups.json: selection for each k minimising the table `score`."""
    task_names = ctx.task_names
    record = pairs_record(
        task_names, networks, {"validation": final.validation, "test": final.test}
    )
    reporting.write_json_atomic(os.path.join(ctx.workdir, "pairs.json"), record)
    selections = grouping.select_for_each_k(
        task_names,
        [[record[score][t][u] for u in task_names] for t in task_names],
        max_groups,
        objective="minimize",
        singletons="diagonal",
        time_limit=time_limit,
    )
    groups = grouping.write_groups(
        ctx.workdir,
        "hoa",
        task_names,
        selections,
        objective="minimize",
        scores=f"pairs.json {score} (scores[t][u] = t trained with u)",
    )
    return {"selections": grouping.selection_summary(groups)}
