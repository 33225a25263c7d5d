"""Divergence checks: non-finite losses, a training loss that blows up, and a run that learns
nothing. Each raises tag_jax.errors.TrainingDiverged (exit status 3) with what to do.

`LossMonitor` watches every step's task losses without making the host wait on the device:
the loop hands it each step's losses (still on the device) and checks them in one transfer at
log steps, before checkpoints and at epoch ends. Every step's loss is checked, in step order,
whenever the check runs, so no verdict depends on config.log_every_steps.
"""

import dataclasses
import math
import os
from typing import Optional

import jax
import numpy as np

from tag_jax.errors import TrainingDiverged

# Divergence beyond NaN, checked where the loop has the numbers on the host: the median summed
# training loss of the last BLOWUP_WINDOW steps above LOSS_BLOWUP x its value at step 1 (the loss
# of the initial parameters, before any update; the median: a spike of fewer than half the
# window's steps is no blow-up, LossTrend); or, at an epoch end after max(CHANCE_MIN_STEPS,
# 3 / (1 - bn_momentum)) steps (batch-norm averages settled), every task's validation loss at
# least CHANCE_FRACTION x log(num_classes), no better than a uniform guess.
LOSS_BLOWUP = 4.0
BLOWUP_WINDOW = 5
CHANCE_MIN_STEPS = 300
CHANCE_FRACTION = 0.98
RESTART_HINT = "lower config.optimizer.learning_rate (now {lr:g}) and start over with --restart"


def check_finite(
    task_loss: np.ndarray, task_names, step: int, workdir: str, last_saved=None
) -> None:
    """TrainingDiverged naming the tasks whose loss is NaN or infinite; last_saved: the step of
    the latest checkpoint, None when there is none. Step s's loss is that of the parameters after
    step s - 1, so at last_saved + 1 the checkpoint itself is what diverged."""
    bad = [name for name, v in zip(task_names, task_loss) if not np.isfinite(v)]
    if bad:
        folder = os.path.join(workdir, "checkpoints")
        if last_saved is None:
            kept = (
                "no checkpoint was saved yet: lower config.optimizer.learning_rate or check the "
                "input data, then re-run"
            )
        elif step == last_saved + 1:
            kept = (
                f"that is the loss of the last checkpoint's parameters: lower "
                f"config.optimizer.learning_rate, delete {os.path.join(folder, str(last_saved))} "
                "and re-run (it resumes from an earlier checkpoint, if any), or start over with "
                "--restart"
            )
        else:
            kept = (
                f"the last checkpoint (step {last_saved}) in {folder} is kept: lower "
                "config.optimizer.learning_rate or check the input data, then re-run to resume"
            )
        raise TrainingDiverged(f"loss of task(s) {bad} became non-finite at step {step}; {kept}")


@dataclasses.dataclass(frozen=True)
class LossTrend:
    """The summed training loss at step 1 (`first`, None before it) and of the last BLOWUP_WINDOW
    steps (`recent`, in step order); checkpointed with the loop (to_json)."""

    first: Optional[float] = None
    recent: tuple = ()

    def add(self, loss: float) -> "LossTrend":
        """The trend with the next step's summed loss."""
        first = loss if self.first is None else self.first
        return LossTrend(first, (self.recent + (loss,))[-BLOWUP_WINDOW:])

    def recent_median(self) -> Optional[float]:
        """The median of the last BLOWUP_WINDOW losses, None before BLOWUP_WINDOW steps."""
        return float(np.median(self.recent)) if len(self.recent) == BLOWUP_WINDOW else None

    def to_json(self) -> dict:
        return {"first": self.first, "recent": list(self.recent)}

    @classmethod
    def from_json(cls, record: dict) -> "LossTrend":
        """The trend a checkpoint's loop record holds ({} for none); TypeError when it is not
        one."""
        first, recent = record.get("first"), record.get("recent", [])
        if (
            set(record) - {"first", "recent"}
            or not (first is None or _is_number(first))
            or not (isinstance(recent, list) and len(recent) <= BLOWUP_WINDOW)
            or not all(_is_number(x) for x in recent)
        ):
            raise TypeError(
                f"loss_trend must hold 'first' (a number or null) and 'recent' (at most "
                f"{BLOWUP_WINDOW} numbers)"
            )
        return cls(None if first is None else float(first), tuple(float(x) for x in recent))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_loss_blowup(trend: LossTrend, step: int, learning_rate: float) -> None:
    """TrainingDiverged when the median summed training loss of the last BLOWUP_WINDOW steps (up
    to `step`) is LOSS_BLOWUP times its value at step 1."""
    recent = trend.recent_median()
    if recent is not None and trend.first > 0 and recent > LOSS_BLOWUP * trend.first:
        raise TrainingDiverged(
            f"training loss {recent:.4g} (median of the {BLOWUP_WINDOW} steps to step {step}) is "
            f"{recent / trend.first:.3g}x its value {trend.first:.4g} at step 1: the run "
            "diverged; " + RESTART_HINT.format(lr=learning_rate)
        )


def check_above_chance(task_loss, step: int, config) -> None:
    """TrainingDiverged when, after enough steps, no task's validation loss beats a uniform
    guess."""
    min_steps = max(CHANCE_MIN_STEPS, math.ceil(3 / (1 - config.model.bn_momentum)))
    chance = math.log(config.model.num_classes)
    task_loss = np.asarray(task_loss, np.float64)
    if not np.isfinite(task_loss).all():
        raise TrainingDiverged(
            f"validation loss became non-finite at step {step}: the run diverged; "
            + RESTART_HINT.format(lr=config.optimizer.learning_rate)
        )
    if step >= min_steps and (task_loss >= CHANCE_FRACTION * chance).all():
        raise TrainingDiverged(
            f"after {step} steps no task does better on validation than a uniform guess (every "
            f"task's loss >= {CHANCE_FRACTION * chance:.3f}, lowest {task_loss.min():.4g}): "
            "the run diverged or learned nothing; check config.optimizer.learning_rate (now "
            f"{config.optimizer.learning_rate:g}) and the labels, then start over with --restart"
        )


@dataclasses.dataclass
class LossMonitor:
    """The task losses (T,) of the steps run since the last check, still on the device, in step
    order; trend: the LossTrend of the steps checked so far (learning_rate: for its message);
    checked_sum, checked_steps: the summed training losses of the steps checked so far, added
    up, and how many (mean_loss)."""

    task_names: tuple
    workdir: str
    trend: LossTrend = LossTrend()
    learning_rate: float = 0.0
    pending: list = dataclasses.field(default_factory=list)
    checked_sum: float = 0.0
    checked_steps: int = 0

    def add(self, step: int, task_losses) -> None:
        self.pending.append((step, task_losses))

    def check(self, last_saved=None, up_to: float = math.inf) -> None:
        """Fetches the losses of the pending steps up to step `up_to` (one transfer, not one per
        step), and in step order raises TrainingDiverged at the first non-finite one
        (check_finite; last_saved: the step of the latest checkpoint) or blow-up
        (check_loss_blowup)."""
        checked = [entry for entry in self.pending if entry[0] <= up_to]
        if not checked:
            return
        values = jax.device_get([losses for _, losses in checked])
        for (step, _), task_loss in zip(checked, values):
            check_finite(np.asarray(task_loss), self.task_names, step, self.workdir, last_saved)
            self.trend = self.trend.add(float(np.sum(task_loss)))
            check_loss_blowup(self.trend, step, self.learning_rate)
        self.checked_sum += float(np.sum(values))
        self.checked_steps += len(values)
        del self.pending[: len(checked)]

    def mean_loss(self):
        """The mean summed training loss of the steps checked so far (None before one)."""
        return self.checked_sum / self.checked_steps if self.checked_steps else None
