"""What the training loop carries between steps: the checkpointed loop record and the run.

`LoopState` is the loop's record saved with every checkpoint (as JSON, `to_json`) beside the
train state; it is frozen: the loop makes a new one with `dataclasses.replace`. `Run` is what one
invocation holds fixed (config, data, method, jitted steps, checkpoint manager, lock), and
`Session` the few things that change while it runs (metric writer, last checkpoint, timers,
which steps have compiled).
"""

import dataclasses
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from tag_jax import divergence, evaluation
from tag_jax.methods.base import LoopContext, Method


@dataclasses.dataclass(frozen=True)
class LoopState:
    """The loop's checkpointed record.

    epoch: finished epochs; batch: batches run of the current epoch; measured_steps: steps that
    ran the method's measured step; stopped_early: early stopping ended training; stop_reason:
    why the method ended training (Method.stop_reason), None while it has not; history: per
    epoch {'epoch', 'step', 'val_loss', 'val_total_error'}; method: the method's own JSON record
    (tag_jax.methods.base); early_stopping: tag_jax.early_stopping's record; train_seconds:
    training seconds over all invocations up to the checkpoint; metrics_records: lines of
    metrics.jsonl at the checkpoint (a resume drops those written after it); loss_trend: the
    summed training losses divergence is judged on (tag_jax.divergence.LossTrend.to_json).
    """

    epoch: int
    batch: int
    measured_steps: int
    stopped_early: bool
    history: list
    method: dict
    early_stopping: dict
    train_seconds: float = 0.0
    metrics_records: Optional[int] = None
    loss_trend: dict = dataclasses.field(default_factory=dict)
    stop_reason: Optional[str] = None

    @property
    def ended(self) -> bool:
        """Early stopping or the method ended training before config.num_epochs."""
        return self.stopped_early or self.stop_reason is not None

    @classmethod
    def fresh(cls, early_stopping_record: dict) -> "LoopState":
        """The record of a run that has not trained yet."""
        return cls(
            epoch=0,
            batch=0,
            measured_steps=0,
            stopped_early=False,
            history=[],
            method={},
            early_stopping=early_stopping_record,
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> "LoopState":
        """The LoopState a checkpoint's JSON record holds; KeyError for a missing field,
        TypeError for an unknown one or a value of the wrong type. The step-1 loss that records
        of earlier versions hold ('initial_loss') is dropped: the trend starts anew."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        record = {k: v for k, v in record.items() if k != "initial_loss"}
        unknown = sorted(set(record) - set(fields))
        if unknown:
            raise TypeError(f"unknown field(s) {unknown}")
        for name, field in fields.items():
            required = field.default is field.default_factory is dataclasses.MISSING
            if name not in record and required:
                raise KeyError(name)
        state = cls(**record)
        for name, kind in (("epoch", int), ("batch", int), ("measured_steps", int)):
            if not isinstance(getattr(state, name), kind) or getattr(state, name) < 0:
                raise TypeError(f"{name} must be an integer >= 0, got {getattr(state, name)!r}")
        for name, kind in (
            ("history", list),
            ("method", dict),
            ("early_stopping", dict),
            ("loss_trend", dict),
        ):
            if not isinstance(getattr(state, name), kind):
                raise TypeError(f"{name} must be a JSON {kind.__name__}")
        if not isinstance(state.stop_reason, (str, type(None))):
            raise TypeError("stop_reason must be a string or null")
        _check_records(state)
        return state


HISTORY_KEYS = ("epoch", "step", "val_loss", "val_total_error")
EARLY_STOPPING_KEYS = ("best_loss", "best_epoch", "epochs_without_improvement")


def _check_records(state: LoopState) -> None:
    """TypeError unless history holds {HISTORY_KEYS: numbers}, early_stopping equal-length lists
    of numbers under EARLY_STOPPING_KEYS and loss_trend a divergence.LossTrend (what the loop
    reads of them)."""
    divergence.LossTrend.from_json(state.loss_trend)

    def numbers(values) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    if not all(
        isinstance(r, dict) and set(HISTORY_KEYS) <= set(r) and numbers(r[k] for k in HISTORY_KEYS)
        for r in state.history
    ):
        raise TypeError(f"history must hold records of {', '.join(HISTORY_KEYS)} (numbers)")
    lists = [state.early_stopping.get(k) for k in EARLY_STOPPING_KEYS]
    if not (
        all(isinstance(v, list) and numbers(v) for v in lists) and len({len(v) for v in lists}) == 1
    ):
        raise TypeError(
            "early_stopping must hold equal-length lists of numbers "
            + ", ".join(EARLY_STOPPING_KEYS)
        )


@dataclasses.dataclass
class Session:
    """What changes while a run lives: the metric writer (tag_jax.metric_writing, opened once
    the checkpoint is restored), the step of the latest checkpoint (None before the first), the
    training seconds of earlier invocations and this one's start, the step kinds compiled so far,
    the mean summed task loss of the steps of the latest train_epoch (the epoch line), and the
    settings resumes changed (tag_jax.workdir.resume_changes, for config.json and results.json)."""

    started: float = dataclasses.field(default_factory=time.time)
    writer: Any = None
    seconds_before: float = 0.0
    last_saved: Optional[int] = None
    compiled: set = dataclasses.field(default_factory=set)
    train_loss: Optional[float] = None
    changed_on_resume: list = dataclasses.field(default_factory=list)

    def seconds(self) -> float:
        """Training seconds of this run over all invocations so far."""
        return self.seconds_before + time.time() - self.started


@dataclasses.dataclass(frozen=True)
class Run:
    """What one invocation holds fixed: inputs, the built method, its jitted steps (compiled on
    first use), the checkpoint manager and the workdir lock; `session` holds what changes."""

    config: ml_collections.ConfigDict
    workdir: str
    dataset: Any
    mesh: Any
    method: Method
    steps_per_epoch: int
    state_sharding: Any
    train_step: Any
    measured_step: Any
    eval_step: Any
    manager: Any
    lock: Any = None
    session: Session = dataclasses.field(default_factory=Session)

    @property
    def task_names(self) -> tuple:
        return tuple(self.dataset.task_names)

    def context(self, step: int) -> LoopContext:
        return LoopContext(
            config=self.config,
            workdir=self.workdir,
            dataset=self.dataset,
            mesh=self.mesh,
            task_names=self.task_names,
            steps_per_epoch=self.steps_per_epoch,
            step=step,
            evaluate=self.evaluate,
            writer=self.session.writer,
            train_seconds=self.session.seconds(),
        )

    def training_batches(self, epoch: int, start_batch: int):
        """The epoch's training batches from `start_batch` on (this process's rows), in the order
        of config.seed; for a method with S seeds, batches (S, B, ...) of the S orders of seeds
        config.seed + s, stacked."""
        config = self.config

        def order(seed):
            return self.dataset.batches(
                "train",
                batch_size=config.batch_size,
                seed=seed,
                epoch=epoch,
                shuffle=True,
                drop_remainder=config.drop_remainder,
                start_batch=start_batch,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )

        if self.method.seeds == 1:
            return order(config.seed)
        return (
            jax.tree.map(lambda *leaves: np.stack(leaves), *batches)
            for batches in zip(*(order(config.seed + s) for s in range(self.method.seeds)))
        )

    def evaluate(self, params, batch_stats, split: str) -> dict:
        """Every network on a split: {'task_loss', 'task_accuracy'} (G, T)."""
        return evaluation.evaluate_networks(
            self.eval_step,
            params,
            batch_stats,
            self.dataset,
            split,
            batch_size=self.config.eval_batch_size,
            mesh=self.mesh,
            prefetch=self.config.prefetch_batches,
        )

    def close(self) -> None:
        """Closes the writers (flushing them) and the checkpoint manager, releases the workdir
        lock."""
        try:
            if self.session.writer:
                self.session.writer.close()
            self.manager.close()
        except Exception as e:  # never hide the error that ended the run
            logging.warning("Closing the run's writers failed: %s", e)
        finally:
            if self.lock:
                self.lock.release()
