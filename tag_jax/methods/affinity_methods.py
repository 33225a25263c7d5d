"""'tag' and 'cs': MTL training that records an inter-task affinity matrix along the way.

Outputs: `affinity.json` ({method, tasks, orientation 'matrix[source][target]',
matrix (T, T), per_epoch, steps_recorded}, TAG's `estimator` {name, its parameters}, plus
`sources` / `source_matrix` when config.affinity.order adds multi-task sources), `affinity.png`,
`affinity_over_time.png`, `affinity_blocks.npz` (the task rows summed over blocks of consecutive
measured steps, steps.record_affinity: tasks, block_sums (B, T, T) source x target,
block_counts (B,)); then `groups.json`, `groups.png` and, resampling those blocks for each
grouping's confidence (config.affinity.confidence), `grouping_confidence.png` (tag_jax.grouping).
With config.affinity.stop_when_stable, every epoch end checks whether the grouping has settled
and the run stops once it has (tag_jax.stability; groups.json 'stability').
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tag_jax import (
    affinity,
    autotune,
    config_checks,
    grouping,
    models,
    optim,
    plots,
    reporting,
    stability,
    stacking,
    steps,
)
from tag_jax.errors import UserError
from tag_jax.methods.base import Method, one_network

LOOKAHEADS = ("sgd", "momentum")
SKETCH_STREAM = 0x5E7C4  # folded into the run's seed for the sketch's random directions


def default_config() -> ml_collections.ConfigDict:
    """config.affinity: how TAG and CS measure the affinity."""
    cfg = ml_collections.ConfigDict()
    # Record the affinity every this many steps (paper: 10; TAG CelebA code: 1).
    cfg.every_n_steps = 10
    # Sources: 'singles' (T tasks), '1' (T tasks + all tasks together), '-1' (every task subset).
    cfg.order = "singles"
    # Lookahead step: 'sgd' (paper: theta - lr g_s) or 'momentum' (the optimizer's next step,
    # theta - lr (g_s + momentum * trace), as the TAG CelebA code).
    cfg.lookahead = "sgd"
    # Trace coefficient for lookahead='momentum'. The CelebA code uses 1.0 (a flag mix-up: its
    # optimizer's momentum is 0.9); set it to config.optimizer.momentum for the true next step.
    cfg.momentum = 1.0
    cfg.weight_decay = 0.0  # Taskonomy code: the optimizer's weight decay
    cfg.scale_by_lr = False  # paper: False; both reference codes divide by lr
    cfg.strategy = "auto"  # 'unrolled' | 'vmap' | 'map' | 'auto' (see tag_jax/stacking.py)
    cfg.chunk_size = 0  # 'map' strategy: sources per chunk (0 = all at once)
    cfg.kernels_only = True  # CS: only conv/dense kernels, as the reference
    # TAG's estimator of the lookahead affinity (derivations in tag_jax/affinity_estimators.py):
    # 'exact' (T pulls + S lookahead forwards), 'first_order' (lr <g_s, g_t> / L_t: T pulls, no
    # lookahead forward) or 'sketched' (the same from sketch_size jvps, cost independent of T).
    # CS ignores it.
    cfg.estimator = "exact"
    cfg.sketch_size = 32  # 'sketched': random directions (forward-mode products) per measured step
    # How sure is the grouping: a block bootstrap over time of the recorded affinity.
    cfg.confidence = grouping.confidence_config()
    # Stop the run once, for every k, the grouping and its confidence have not changed for this
    # many epoch ends (0 = measure for the whole run; tag_jax/stability.py, docs/confidence.md).
    cfg.stop_when_stable = 0
    # Confidences "unchanged": the same verdict, spread by at most this much.
    cfg.stable_tolerance = 0.1
    # The checks may take at most this share of the run's time: a check computes confidences
    # only while they fit.
    cfg.stable_check_share = 0.1
    return cfg


def _tag_mapped_slices(config, num_tasks: int) -> int:
    """The most slices the TAG step maps over: sketch directions ('sketched'), else the T pulls
    and ('exact') the S lookahead forwards."""
    aff = config.affinity
    if aff.estimator == "sketched":
        return aff.sketch_size
    if aff.estimator == "first_order":
        return num_tasks
    return max(num_tasks, len(affinity.sources_for_order(num_tasks, aff.order)))


# config.affinity.strategy='auto' is decided by timing the measured step (tag_jax.autotune).
TAG_STRATEGY = autotune.Tunable(
    "affinity.strategy",
    lambda config, num_tasks: stacking.timing_candidates(_tag_mapped_slices(config, num_tasks)),
    step="measured",
    key_paths=(
        "affinity.estimator",
        "affinity.order",
        "affinity.lookahead",
        "affinity.sketch_size",
        "affinity.chunk_size",
    ),
)
CS_STRATEGY = autotune.Tunable(
    "affinity.strategy",
    lambda config, num_tasks: stacking.timing_candidates(num_tasks),
    step="measured",
    key_paths=("affinity.kernels_only", "affinity.chunk_size"),
)


BLOCK = config_checks.Block(
    "affinity",
    default_config,
    {
        "every_n_steps": config_checks.POSITIVE,
        "order": config_checks.Choice(affinity.ORDERS),
        "lookahead": config_checks.Choice(LOOKAHEADS),
        "momentum": config_checks.number(),
        "weight_decay": config_checks.number(0),
        "scale_by_lr": config_checks.BOOL,
        "strategy": config_checks.Choice(stacking.STRATEGIES),
        "chunk_size": config_checks.NON_NEGATIVE,
        "kernels_only": config_checks.BOOL,
        "estimator": config_checks.Choice(affinity.ESTIMATORS),
        "sketch_size": config_checks.POSITIVE,
        "confidence.num_resamples": config_checks.NON_NEGATIVE,
        "confidence.block_length": config_checks.POSITIVE,
        "confidence.seed": config_checks.SEED,
        "confidence.time_budget": config_checks.number(0, low_open=True),
        "stop_when_stable": config_checks.NON_NEGATIVE,
        "stable_tolerance": config_checks.number(0, 1),
        "stable_check_share": config_checks.number(0, low_open=True),
    },
)


def momentum_lookahead_needs_sgd(config) -> None:
    """TAG's lookahead='momentum' takes the next step of SGD with momentum."""
    if config.affinity.lookahead == "momentum" and not (
        config.optimizer.name == "sgd" and config.optimizer.momentum
    ):
        raise UserError(
            "config.affinity.lookahead='momentum' needs config.optimizer.name='sgd' with "
            "config.optimizer.momentum > 0; use lookahead='sgd' otherwise"
        )


def stopping_needs_confidence(config) -> None:
    """stop_when_stable watches the grouping's confidence, which needs resamples."""
    if config.affinity.stop_when_stable and not config.affinity.confidence.num_resamples:
        raise UserError(
            "config.affinity.stop_when_stable needs the confidence it watches: set "
            "config.affinity.confidence.num_resamples > 0 (default 100), or stop_when_stable=0"
        )


def build_tag(config, task_names, image_shape, steps_per_epoch) -> Method:
    aff = config.affinity
    model = models.create_model(config, len(task_names))
    sources = affinity.sources_for_order(len(task_names), aff.order)
    measure, measured_passes = _tag_measure(
        config,
        model,
        optim.learning_rate_schedule(config, steps_per_epoch),
        sources,
        len(task_names),
    )
    source_names = [[task_names[t] for t in members] for members in sources]
    return _affinity_method(
        "tag",
        config,
        task_names,
        image_shape,
        steps_per_epoch,
        model,
        measure,
        source_names,
        measured_passes=measured_passes,
        per_task=aff.estimator != "sketched",
        estimator=estimator_record(aff),
    )


def _tag_measure(config, model, learning_rate_fn, sources, num_tasks):
    """(measure, trunk passes per measured step) of config.affinity.estimator.

    Passes: exact 1 + S lookahead forwards + T pulls; first_order 1 + T pulls; sketched 1 +
    sketch_size jvps (+1 for the momentum / weight-decay direction when there is one).
    """
    aff = config.affinity
    lookahead = dict(
        sources=sources,
        lookahead=aff.lookahead,
        momentum=aff.momentum,
        weight_decay=aff.weight_decay,
        scale_by_lr=aff.scale_by_lr,
    )
    if aff.estimator == "first_order":
        return steps.make_first_order_measure(learning_rate_fn, **lookahead), 1 + num_tasks
    if aff.estimator == "sketched":
        key = jax.random.fold_in(jax.random.key(config.seed), SKETCH_STREAM)
        measure = steps.make_sketched_measure(
            model,
            learning_rate_fn,
            key=key,
            sketch_size=aff.sketch_size,
            strategy=aff.strategy,
            chunk_size=aff.chunk_size or None,
            **lookahead,
        )
        has_direction = aff.lookahead == "momentum" or bool(aff.weight_decay)
        return measure, 1 + aff.sketch_size + int(has_direction)
    measure = steps.make_tag_measure(
        model,
        learning_rate_fn,
        strategy=aff.strategy,
        chunk_size=aff.chunk_size or None,
        **lookahead,
    )
    return measure, 1 + len(sources) + num_tasks


def estimator_record(aff) -> dict:
    """affinity.json's 'estimator': its name and the parameters that shape it."""
    record = {"name": aff.estimator}
    if aff.estimator == "sketched":
        record["sketch_size"] = aff.sketch_size
    return record


def build_cs(config, task_names, image_shape, steps_per_epoch) -> Method:
    model = models.create_model(config, len(task_names))
    measure = steps.make_cs_measure(kernels_only=config.affinity.kernels_only)
    return _affinity_method(
        "cs",
        config,
        task_names,
        image_shape,
        steps_per_epoch,
        model,
        measure,
        [[t] for t in task_names],
        measured_passes=1 + len(task_names),
    )


def _affinity_method(
    name,
    config,
    task_names,
    image_shape,
    steps_per_epoch,
    model,
    measure,
    source_names,
    measured_passes,
    per_task=True,
    estimator=None,
) -> Method:
    """The MTL network with `measure` recorded every config.affinity.every_n_steps steps."""
    if config.affinity.stop_when_stable and jax.process_count() > 1:
        raise UserError(
            "config.affinity.stop_when_stable works in one process only (each process would "
            "time its own checks and could stop at another epoch); set it to 0"
        )
    optimizer = optim.create_optimizer(config, steps_per_epoch)
    tracker = steps.init_affinity_tracker(len(source_names), len(task_names))
    finish = functools.partial(
        write_outputs,
        name=name,
        source_names=source_names,
        max_groups=tuple(config.selection.max_groups),
        time_limit=config.selection.time_limit,
        confidence_config=config.affinity.confidence,
        estimator=estimator,
    )
    return Method(
        init_state=lambda rng: steps.init_train_state(model, optimizer, rng, image_shape, tracker),
        train_step=steps.make_mtl_step(model, optimizer),
        eval_step=steps.make_eval_step(model),
        measured_step=steps.make_measured_step(
            model,
            optimizer,
            measure,
            strategy=config.affinity.strategy,
            chunk_size=config.affinity.chunk_size or None,
            per_task=per_task,
        ),
        measure_every=config.affinity.every_n_steps,
        trunk_passes=(1, measured_passes),
        on_epoch_end=close_affinity_epoch,
        stop_reason=functools.partial(
            stability.stop_reason,
            epochs=config.affinity.stop_when_stable,
            tolerance=config.affinity.stable_tolerance,
        ),
        finish=finish,
        **one_network(len(task_names)),
    )


def close_affinity_epoch(ctx, state, record):
    """Appends the epoch's mean affinity (or None) to record['affinity_per_epoch'] and writes it to
    TensorBoard (an image, and scalars affinity/<source>/<target> up to 12 tasks); zeroes the
    epoch sums."""
    tracker = state.tracker
    count = int(tracker["epoch_count"])
    mean = np.asarray(tracker["epoch_sum"])[: len(ctx.task_names)] / max(count, 1)
    if count:
        ctx.writer.write_images(ctx.step, {"affinity": plots.matrix_image(mean)[None]})
        if len(ctx.task_names) <= 12:
            ctx.writer.write_scalars(
                ctx.step,
                {
                    f"affinity/{s}/{t}": float(mean[i, j])
                    for i, s in enumerate(ctx.task_names)
                    for j, t in enumerate(ctx.task_names)
                },
            )
    per_epoch = record.get("affinity_per_epoch", []) + [
        (np.asarray(tracker["epoch_sum"]) / count).tolist() if count else None
    ]
    state = state.replace(
        tracker={
            **tracker,
            "epoch_sum": jnp.zeros_like(tracker["epoch_sum"]),
            "epoch_count": jnp.zeros_like(tracker["epoch_count"]),
        }
    )
    record = {**record, "affinity_per_epoch": per_epoch}
    checks = record.get("stability", {}).get("checks", [])
    aff = ctx.config.affinity
    if (
        aff.stop_when_stable
        and int(tracker["run_count"])
        and stability.wants_check(checks, ctx.train_seconds, aff.stable_check_share)
    ):
        record = {**record, "stability": stability_check(ctx, tracker, record)}
    return state, record


def stability_check(ctx, tracker, record) -> dict:
    """record['stability'] with this epoch end's check appended (tag_jax.stability): 'checks'."""
    aff, checks = ctx.config.affinity, record.get("stability", {}).get("checks", [])
    num_tasks = len(ctx.task_names)
    mean = np.asarray(tracker["run_sum"])[:num_tasks] / int(tracker["run_count"])
    epoch_check = stability.grouping_check(
        len(record["affinity_per_epoch"]),
        list(ctx.task_names),
        mean.T,
        max_groups=tuple(ctx.config.selection.max_groups),
        time_limit=ctx.config.selection.time_limit,
    )
    checks = checks + [epoch_check]
    last_epoch = epoch_check["epoch"] == ctx.config.num_epochs  # the run's end computes it
    if not last_epoch and stability.wants_confidence(
        checks,
        aff.stop_when_stable,
        ctx.train_seconds,
        aff.stable_check_share,
        aff.confidence.num_resamples,
    ):
        checks[-1] = stability.with_confidence(
            epoch_check,
            list(ctx.task_names),
            affinity_blocks(tracker),
            aff.confidence,
            ctx.config.selection.time_limit,
        )
    return {"checks": checks}


def write_outputs(
    ctx,
    state,
    record,
    final,
    *,
    name,
    source_names,
    max_groups,
    time_limit,
    confidence_config,
    estimator=None,
) -> dict:
    """affinity.json, affinity_blocks.npz and plots, then groups.json for each k in max_groups
    with each grouping's confidence; returns their summary."""
    del final  # the affinity is a record of training, not of the reported parameters
    affinity_record = affinity_json(
        name,
        ctx.task_names,
        source_names,
        state.tracker,
        record.get("affinity_per_epoch", []),
        estimator,
    )
    reporting.write_json_atomic(os.path.join(ctx.workdir, "affinity.json"), affinity_record)
    plots.save(plots.affinity_heatmap(affinity_record), os.path.join(ctx.workdir, "affinity.png"))
    plots.save(
        plots.affinity_over_time(affinity_record),
        os.path.join(ctx.workdir, "affinity_over_time.png"),
    )
    blocks = affinity_blocks(state.tracker)
    reporting.write_npz_atomic(
        os.path.join(ctx.workdir, "affinity_blocks.npz"),
        tasks=np.asarray(ctx.task_names),
        block_sums=blocks["sums"],
        block_counts=blocks["counts"],
        steps_per_block=blocks["steps_per_block"],
    )
    checks = record.get("stability", {}).get("checks")
    groups = grouping.groups_from_affinity(
        ctx.workdir,
        affinity_record,
        max_groups,
        time_limit,
        blocks,
        confidence_config,
        **({"stability": stability.summary(ctx.config.affinity, checks)} if checks else {}),
    )
    return {
        "steps_recorded": affinity_record["steps_recorded"],
        "selections": grouping.selection_summary(groups),
    }


def affinity_blocks(tracker) -> dict:
    """The tracker's non-empty blocks, in time order: {'sums': (B, T, T) source x target,
    'counts': (B,), 'steps_per_block': measured steps in each full block}."""
    counts = np.asarray(tracker["block_counts"])
    kept = counts > 0
    return {
        "sums": np.asarray(tracker["block_sums"], np.float64)[kept],
        "counts": counts[kept],
        "steps_per_block": int(tracker["block_length"]),
    }


def affinity_json(name, task_names, source_names, tracker, per_epoch, estimator=None) -> dict:
    """affinity.json: run mean (source x target), per-epoch means, orientation stated; TAG adds
    its estimator ({'name', ...parameters})."""
    count = int(tracker["run_count"])
    if not count:
        raise UserError("no affinity step was recorded; lower config.affinity.every_n_steps")
    full = np.asarray(tracker["run_sum"]) / count
    num_tasks = len(task_names)
    record = {
        "method": name,
        "tasks": list(task_names),
        "orientation": "matrix[source][target]",
        "matrix": full[:num_tasks].tolist(),
        "per_epoch": [None if m is None else m[:num_tasks] for m in per_epoch],
        "steps_recorded": count,
    }
    if estimator is not None:
        record["estimator"] = estimator
    if full.shape[0] > num_tasks:
        record["sources"] = source_names
        record["source_matrix"] = full.tolist()
    return record
