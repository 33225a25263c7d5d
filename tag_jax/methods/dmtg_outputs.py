"""DMTG's read-out and outputs: softmax(Θ) per epoch, the argmax grouping, its confidence
(tag_jax.methods.dmtg_confidence), groups.json, dmtg_assignment.png and grouping_confidence.png
(tag_jax.methods.dmtg)."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from tag_jax import grouping, plots, reporting
from tag_jax.methods import dmtg_confidence


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
    return dmtg_confidence.groups_from_labels(task_names, np.argmax(np.asarray(group_logits), -1))


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


def confidence_epochs(ctx, final, num_recorded: int) -> list:
    """1-based epochs whose Θ the confidence draws from (dmtg_confidence.search_window): after
    config.dmtg.warmup_steps, before the fine-tuning epochs, up to the reported epoch (the
    early-stopping best when the run restores it, as tag_jax.results reports, else the last)."""
    config = ctx.config
    best = max(final.best_epoch)
    reported = best if config.early_stopping.restore_best and best > 0 else num_recorded
    window = dmtg_confidence.search_window(
        num_recorded,
        reported,
        learned_from=config.dmtg.warmup_steps // ctx.steps_per_epoch + 1,
        learned_to=config.num_epochs - config.dmtg.finetune_epochs,
        epochs=config.dmtg.confidence.epochs,
    )
    return [index + 1 for index in window]


def with_confidence(record: dict, epochs: list, cfg) -> dict:
    """groups.json with its selection's confidence (dmtg_confidence) and 'resampling': draws from
    softmax(Θ) at the given epoch ends (1-based), or from the reported Θ when there are none."""
    per_epoch = record["probabilities_per_epoch"]
    probabilities = [per_epoch[e - 1] for e in epochs] or [record["probabilities"]]
    (selection,) = record["selections"]
    fields = dmtg_confidence.assignment_confidence(
        record["tasks"], selection["groups"], probabilities, cfg
    )
    resampling = {
        "method": "groups drawn from softmax(Θ) at epoch ends of the search (Gumbel-max)",
        "num_samples": cfg.num_samples,
        "seed": cfg.seed,
        "epochs": list(epochs),  # none: the reported Θ
    }
    return {**record, "selections": [{**selection, **fields}], "resampling": resampling}


def write_dmtg_outputs(ctx, state, record, final) -> dict:
    """groups.json, dmtg_assignment.png and (with config.dmtg.confidence.num_samples > 0) the
    grouping's confidence and grouping_confidence.png, of the evaluated parameters' Θ."""
    del state
    per_epoch = record.get("probabilities_per_epoch", [])
    groups = groups_record(ctx.task_names, final.params["group_logits"], per_epoch)
    cfg = ctx.config.dmtg.confidence
    if cfg.num_samples:
        groups = with_confidence(groups, confidence_epochs(ctx, final, len(per_epoch)), cfg)
    reporting.write_json_atomic(os.path.join(ctx.workdir, "groups.json"), groups)
    plots.save(
        plots.assignment_probabilities(groups), os.path.join(ctx.workdir, "dmtg_assignment.png")
    )
    if cfg.num_samples:
        plots.save(
            plots.grouping_confidence(groups),
            os.path.join(ctx.workdir, "grouping_confidence.png"),
        )
    return {
        "selections": grouping.selection_summary(groups),
        "probabilities": groups["probabilities"],
    }
