"""DMTG's read-out and outputs: softmax(Θ) per epoch, the argmax grouping, groups.json and
dmtg_assignment.png (tag_jax.methods.dmtg)."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from tag_jax import grouping, plots, reporting


def probabilities(group_logits) -> np.ndarray:
    """softmax(Θ) over groups: (N, K)."""
    return np.asarray(jax.nn.softmax(jnp.asarray(group_logits, jnp.float32), axis=-1))


def record_probabilities(ctx, state, record):
    """Appends softmax(Θ) (N, K) to record['probabilities_per_epoch'] (checkpointed with it)."""
    del ctx
    per_epoch = record.get("probabilities_per_epoch", []) + [
        probabilities(state.params["group_logits"]).tolist()
    ]
    return state, {**record, "probabilities_per_epoch": per_epoch}


def groups_from_logits(task_names, group_logits) -> list:
    """Tasks grouped by argmax_k Θ[n, k]: groups in order of first task, empty ones dropped."""
    chosen = np.argmax(np.asarray(group_logits), axis=-1)
    return [[name for name, g in zip(task_names, chosen) if g == k] for k in dict.fromkeys(chosen)]


def groups_record(task_names, group_logits, probabilities_per_epoch) -> dict:
    """groups.json: the TAG/CS selection format (one selection, max_groups = K) plus softmax(Θ)."""
    groups = groups_from_logits(task_names, group_logits)
    return {
        "method": "dmtg",
        "tasks": list(task_names),
        "selections": [
            {
                "max_groups": int(np.shape(group_logits)[-1]),
                "groups": groups,
                "score": None,
                "assignment": {name: next(g for g in groups if name in g) for name in task_names},
                "gap": None,
            }
        ],
        "probabilities": probabilities(group_logits).tolist(),
        "probabilities_per_epoch": list(probabilities_per_epoch),
    }


def write_dmtg_outputs(ctx, state, record, final) -> dict:
    """groups.json and dmtg_assignment.png of the evaluated parameters' Θ, in ctx.workdir."""
    del state
    groups = groups_record(
        ctx.task_names, final.params["group_logits"], record.get("probabilities_per_epoch", [])
    )
    reporting.write_json_atomic(os.path.join(ctx.workdir, "groups.json"), groups)
    plots.save(
        plots.assignment_probabilities(groups), os.path.join(ctx.workdir, "dmtg_assignment.png")
    )
    return {
        "selections": grouping.selection_summary(groups),
        "probabilities": groups["probabilities"],
    }
