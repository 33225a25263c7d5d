"""Train state and pure, jittable steps: (state, batch) -> (state, metrics)."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tag_jax import affinity, affinity_estimators, losses


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue bit-for-bit after a restart.

    params / batch_stats: {'shared': trunk, 'heads': stacked heads} (batch_stats: trunk only).
    best_*: the parameters with the best summed validation loss so far (early stopping).
    tracker: method accumulators (e.g. affinity sums), a dict of arrays.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    best_params: Any
    best_batch_stats: Any
    tracker: Any


def init_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    image_shape,
    tracker=None,
) -> TrainState:
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=optimizer.init(params),
        best_params=copy_tree(params),
        best_batch_stats=copy_tree(batch_stats),
        tracker=tracker or {},
    )


def copy_tree(tree):
    """Fresh buffers, so that a donated state never holds one buffer twice."""
    return jax.tree.map(jnp.copy, tree)


def task_losses(model: nn.Module, params, batch_stats, batch):
    """Training-mode forward: per-task losses (T,) and the updated batch statistics."""
    logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        batch["image"],
        train=True,
        mask=batch["mask"],
        mutable=["batch_stats"],
    )
    return losses.per_task_cross_entropy(logits, batch["labels"], batch["mask"]), updates[
        "batch_stats"
    ]


def shared_losses_fn(model: nn.Module, params, batch_stats):
    """losses_fn(shared_params, batch) -> (T,) with heads fixed and batch statistics of the batch.

    Running averages are not touched (TAG's lookahead forwards,
    docs/reference.md#tag-lookahead-affinity).
    """

    def losses_fn(shared, batch):
        return task_losses(model, {**params, "shared": shared}, batch_stats, batch)[0]

    return losses_fn


def apply_gradients(state: TrainState, optimizer, grads, batch_stats) -> TrainState:
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )


def make_mtl_step(model: nn.Module, optimizer):
    """Plain multi-task step on the sum of task losses. metrics: loss (), task_losses (T,)."""

    def train_step(state: TrainState, batch):
        def total_loss(params):
            task_loss, batch_stats = task_losses(model, params, state.batch_stats, batch)
            return task_loss.sum(), (task_loss, batch_stats)

        grads, (task_loss, batch_stats) = jax.grad(total_loss, has_aux=True)(state.params)
        state = apply_gradients(state, optimizer, grads, batch_stats)
        return state, {"loss": task_loss.sum(), "task_losses": task_loss}

    return train_step


def eval_sums(model: nn.Module, params, batch_stats, batch) -> dict:
    """Inference sums of one network on a padded batch: loss_sum (T,), correct (T,), count ()."""
    logits = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["image"], train=False
    )
    return losses.eval_sums(logits, batch["labels"], batch["mask"])


def example_values(model: nn.Module, params, batch_stats, batch) -> dict:
    """Inference values of one network on every example of a batch: loss (B, T), correct (B, T)
    (padded rows included: batch['mask'] says which are real)."""
    logits = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["image"], train=False
    )
    return losses.example_values(logits, batch["labels"])


def make_eval_step(model: nn.Module):
    """The loop's eval_step of a single network: loss_sum (1, T), correct (1, T), count ()."""

    def eval_step(params, batch_stats, batch):
        sums = eval_sums(model, params, batch_stats, batch)
        return {
            "loss_sum": sums["loss_sum"][None],
            "correct": sums["correct"][None],
            "count": sums["count"],
        }

    return eval_step


# Capacity of the affinity tracker's block buffer (even): blocks of consecutive measured steps
# kept for resampling (selection.confidence); full, adjacent blocks merge pairwise.
AFFINITY_BLOCKS = 256


def init_affinity_tracker(num_sources: int, num_tasks: int, num_blocks=AFFINITY_BLOCKS) -> dict:
    """Sums of recorded (S, T) matrices for the current epoch and the whole run, and their counts;
    block_sums (num_blocks, T, T): the task rows summed over blocks of block_length consecutive
    measured steps (block i holds steps i * block_length ... in recording order), block_counts
    (num_blocks,) the steps in each (see record_affinity)."""
    shape = (num_sources, num_tasks)
    return {
        "epoch_sum": jnp.zeros(shape),
        "epoch_count": jnp.zeros((), jnp.int32),
        "run_sum": jnp.zeros(shape),
        "run_count": jnp.zeros((), jnp.int32),
        "block_sums": jnp.zeros((num_blocks, num_tasks, num_tasks)),
        "block_counts": jnp.zeros((num_blocks,), jnp.int32),
        "block_length": jnp.ones((), jnp.int32),
    }


def merged_block_pairs(block_sums, block_counts, block_length):
    """Adjacent blocks summed pairwise into the first half of the buffer (the second half zero),
    block_length doubled."""

    def halve(x):
        merged = x.reshape(x.shape[0] // 2, 2, *x.shape[1:]).sum(1)
        return jnp.concatenate([merged, jnp.zeros_like(merged)])

    return halve(block_sums), halve(block_counts), block_length * 2


def record_affinity(tracker: dict, matrix) -> dict:
    """Adds one measured (S, T) matrix to the sums and its task rows to the current block (after
    merging blocks pairwise if the buffer is full)."""
    num_tasks = tracker["block_sums"].shape[1]
    recorded = tracker["run_count"]  # steps recorded before this one
    blocks = (tracker["block_sums"], tracker["block_counts"], tracker["block_length"])
    full = recorded // tracker["block_length"] >= tracker["block_counts"].shape[0]
    block_sums, block_counts, block_length = jax.lax.cond(
        full, merged_block_pairs, lambda *b: b, *blocks
    )
    index = recorded // block_length
    return {
        "epoch_sum": tracker["epoch_sum"] + matrix,
        "epoch_count": tracker["epoch_count"] + 1,
        "run_sum": tracker["run_sum"] + matrix,
        "run_count": recorded + 1,
        "block_sums": block_sums.at[index].add(matrix[:num_tasks]),
        "block_counts": block_counts.at[index].add(1),
        "block_length": block_length,
    }


def make_measured_step(
    model: nn.Module, optimizer, measure, *, strategy: str, chunk_size=None, per_task: bool = True
):
    """An MTL step that also records measure(state, batch, task_grads, losses) -> (S, T).

    per_task: per-task gradients of all parameters come from one vjp of the (T,)
    losses; their sum is the MTL gradient, so the update equals the plain step's.
    task_grads: pytree like params with leaves (T, ...). Without per_task (a
    measure that needs no per-task gradient), the plain step's gradient and
    task_grads=None.
    """

    def train_step(state: TrainState, batch):
        task_loss, vjp_fn, batch_stats = jax.vjp(
            lambda p: task_losses(model, p, state.batch_stats, batch), state.params, has_aux=True
        )
        if per_task:
            task_grads = affinity.per_task_gradients(
                vjp_fn, task_loss.shape[0], strategy=strategy, chunk_size=chunk_size
            )
            grads = jax.tree.map(lambda g: g.sum(0), task_grads)
        else:
            task_grads, (grads,) = None, vjp_fn(jnp.ones_like(task_loss))
        matrix = measure(state, batch, task_grads, task_loss)
        state = state.replace(tracker=record_affinity(state.tracker, matrix))
        state = apply_gradients(state, optimizer, grads, batch_stats)
        return state, {"loss": task_loss.sum(), "task_losses": task_loss}

    return train_step


def momentum_trace(opt_state):
    """The SGD momentum trace (params-shaped) inside an optax state, or None if there is none."""
    traces = optax.tree_utils.tree_get_all_with_path(opt_state, "trace")
    return traces[0][1] if traces else None


def make_tag_measure(
    model: nn.Module,
    learning_rate_fn,
    *,
    sources,
    lookahead: str,
    momentum: float,
    weight_decay: float,
    scale_by_lr: bool,
    strategy: str,
    chunk_size=None,
):
    """measure() for TAG: lookahead affinity (S, T) of the shared trunk at the current step.

    lookahead 'sgd' (theta - lr g_s) or 'momentum' (adds momentum * the optimizer's trace);
    the other arguments as affinity.lookahead_affinity.
    """

    def measure(state, batch, task_grads, task_loss):
        trace = momentum_trace(state.opt_state)["shared"] if lookahead == "momentum" else None
        return affinity.affinity_from_task_gradients(
            shared_losses_fn(model, state.params, state.batch_stats),
            state.params["shared"],
            batch,
            task_loss,
            task_grads["shared"],
            learning_rate=learning_rate_fn(state.step),
            momentum=momentum,
            trace=trace,
            weight_decay=weight_decay,
            scale_by_lr=scale_by_lr,
            sources=sources,
            strategy=strategy,
            chunk_size=chunk_size,
        )

    return measure


def make_first_order_measure(
    learning_rate_fn,
    *,
    sources,
    lookahead: str,
    momentum: float,
    weight_decay: float,
    scale_by_lr: bool,
):
    """measure() for TAG's 'first_order' estimator (affinity module docstring): (S, T) from the
    per-task gradients of the shared trunk, no lookahead forward."""

    def measure(state, batch, task_grads, task_loss):
        del batch
        trace = momentum_trace(state.opt_state)["shared"] if lookahead == "momentum" else None
        return affinity_estimators.first_order_from_task_gradients(
            state.params["shared"],
            task_loss,
            task_grads["shared"],
            learning_rate=learning_rate_fn(state.step),
            momentum=momentum,
            trace=trace,
            weight_decay=weight_decay,
            scale_by_lr=scale_by_lr,
            sources=sources,
        )

    return measure


def make_sketched_measure(
    model: nn.Module,
    learning_rate_fn,
    *,
    key,
    sketch_size: int,
    sources,
    lookahead: str,
    momentum: float,
    weight_decay: float,
    scale_by_lr: bool,
    strategy: str,
    chunk_size=None,
):
    """measure() for TAG's 'sketched' estimator: (S, T) from sketch_size jvps of the shared trunk
    along Rademacher directions drawn from fold_in(key, step); needs no per-task gradient."""

    def measure(state, batch, task_grads, task_loss):
        del task_grads, task_loss  # the linearisation recomputes the losses it differentiates
        trace = momentum_trace(state.opt_state)["shared"] if lookahead == "momentum" else None
        return affinity_estimators.sketched_affinity(
            shared_losses_fn(model, state.params, state.batch_stats),
            state.params["shared"],
            batch,
            key=jax.random.fold_in(key, state.step),
            sketch_size=sketch_size,
            learning_rate=learning_rate_fn(state.step),
            momentum=momentum,
            trace=trace,
            weight_decay=weight_decay,
            scale_by_lr=scale_by_lr,
            sources=sources,
            strategy=strategy,
            chunk_size=chunk_size,
        )

    return measure


def make_cs_measure(*, kernels_only: bool):
    """measure() for CS: (T, T) cosine of per-task gradients of the shared trunk."""

    def measure(state, batch, task_grads, task_loss):
        del state, batch, task_loss
        return affinity.cosine_from_task_gradients(task_grads["shared"], kernels_only=kernels_only)

    return measure
