"""HOA's outputs of a 'pairs' run (tag_jax.methods.groups): pairs.json, the pairwise table of every
pair and single-task network, and groups.json, the HOA selection on it, with its confidence.

Confidence (config.groups.confidence): how much the selection depends on which validation
examples scored the networks. Every pair and single-task network is evaluated once more on the
validation split, example by example (the value of `config.groups.hoa_score`: the loss, or
whether the prediction is correct); a resample draws the validation examples with replacement
(tag_jax.resampling), its means give a resampled pairwise table, and the HOA selection is re-run
on it for every k (selection.confidence.resampled_selections, within `time_budget` seconds).
Each selection's `confidence` is the share of resamples that choose it (grouping.with_confidence:
alternatives, co-membership, verdict). The networks are not retrained: training noise (another
seed) is not part of it.
"""

import os
import time

import jax
import ml_collections
import numpy as np

from selection import confidence
from tag_jax import evaluation, grouping, reporting, resampling


def confidence_config() -> ml_collections.ConfigDict:
    """config.groups.confidence ('pairs'): the bootstrap over validation examples behind each
    HOA grouping's confidence."""
    cfg = ml_collections.ConfigDict()
    cfg.num_resamples = 100  # resamples of the validation examples (0 = no confidence)
    cfg.seed = 0  # the resamples drawn; results are deterministic for a seed
    # Seconds for all resamples and k: tables are solved exactly while time is left, then the
    # rest take the best grouping found so far (groups.json 'resampling' says how many).
    cfg.time_budget = 30.0
    return cfg


def member_cells(networks, task_names) -> tuple:
    """(network, task, partner) index arrays (M,), one entry per member task of every network in
    network order: the pairwise table's cell [task, partner] holds the task's value in that
    network (partner: the other member of a pair, the task itself alone). M = T + T(T - 1)."""
    index = {t: i for i, t in enumerate(task_names)}
    cells = [
        (g, index[t], index[next((u for u in members if u != t), t)])
        for g, members in enumerate(networks)
        for t in members
    ]
    return tuple(np.array(column) for column in zip(*cells))


def pairwise_table(task_names, networks, values) -> dict:
    """{t: {u: values[network {t, u}, t]}}, diagonal from the single-task networks; values
    (G, T)."""
    network, task, partner = member_cells(networks, task_names)
    table = np.zeros((len(task_names), len(task_names)))
    table[task, partner] = np.asarray(values, np.float64)[network, task]
    return {
        t: {u: float(table[i, j]) for j, u in enumerate(task_names)}
        for i, t in enumerate(task_names)
    }


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


def make_member_example_step(nets, networks, task_names, value: str):
    """Jitted step(params, batch_stats, batch) -> {value: (B, M)}: `value` ('loss' or 'correct',
    StackedNets.example_values) of every member cell (member_cells order) on every example."""
    network, task, _ = member_cells(networks, task_names)

    def step(params, batch_stats, batch):
        values = nets.example_values(params, batch_stats, batch)[value]  # (G, B, T)
        return {value: values[network, :, task].T}

    return jax.jit(step)


def pairwise_tables(member_means, networks, task_names, score: str) -> np.ndarray:
    """(R, T, T) pairwise tables scores[t][u] (t trained with u) from member_means (R, M): each
    member cell's (member_cells order) mean loss for score 'validation_loss', or mean correct
    for 'validation_error', which the table holds as 100 x (1 - mean)."""
    member_means = np.asarray(member_means, np.float64)
    if score == "validation_error":
        member_means = 100.0 * (1.0 - member_means)
    _, task, partner = member_cells(networks, task_names)
    tables = np.zeros((len(member_means), len(task_names), len(task_names)))
    tables[:, task, partner] = member_means
    return tables


def resampled_tables(member_values, networks, task_names, score: str, num_resamples, seed):
    """(R, T, T) pairwise tables of bootstrap resamples of the examples of member_values (E, M):
    every example's value of every member cell (pairwise_tables)."""
    means = resampling.bootstrap_means(member_values, num_resamples, seed)
    return pairwise_tables(means, networks, task_names, score)


def resampled_confidence(ctx, final, nets, selections, *, networks, score, config, time_limit):
    """(selections with confidence, groups.json's 'resampling'): the HOA selection re-run on
    pairwise tables from bootstrap resamples of the validation examples (module docstring)."""
    task_names = ctx.task_names
    value = "loss" if score == "validation_loss" else "correct"
    started = time.monotonic()
    member_values = evaluation.per_example_values(
        make_member_example_step(nets, networks, task_names, value),
        final.params,
        final.batch_stats,
        ctx.dataset,
        "validation",
        batch_size=ctx.config.eval_batch_size,
        mesh=ctx.mesh,
        prefetch=ctx.config.prefetch_batches,
    )[value]
    evaluation_seconds = time.monotonic() - started
    tables = resampled_tables(
        member_values, networks, task_names, score, config.num_resamples, config.seed
    )
    sampled, usage = confidence.resampled_selections(
        task_names,
        tables,
        {s["max_groups"]: s["groups"] for s in selections},
        objective="minimize",
        singletons="diagonal",
        time_budget=config.time_budget,
        time_limit=time_limit,
    )
    resampling_record = {
        "method": f"bootstrap over validation examples of every network's {value}",
        "num_resamples": config.num_resamples,
        "seed": config.seed,
        "examples": len(member_values),
        "evaluation_seconds": evaluation_seconds,  # every network on every validation example
        **usage,
    }
    return grouping.with_confidence(selections, task_names, sampled), resampling_record


def write_pairs_outputs(
    ctx, final, nets, *, networks, score, max_groups, time_limit, confidence_config
) -> dict:
    """pairs.json, then HOA's groups.json: selection for each k minimising the table `score`,
    with each selection's confidence unless confidence_config.num_resamples is 0."""
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
    extra = {}
    if confidence_config.num_resamples:
        selections, extra["resampling"] = resampled_confidence(
            ctx,
            final,
            nets,
            selections,
            networks=networks,
            score=score,
            config=confidence_config,
            time_limit=time_limit,
        )
    groups = grouping.write_groups(
        ctx.workdir,
        "hoa",
        task_names,
        selections,
        objective="minimize",
        scores=f"pairs.json {score} (scores[t][u] = t trained with u)",
        **extra,
    )
    return {"selections": grouping.selection_summary(groups)}
