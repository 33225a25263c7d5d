"""Divergence checks: non-finite losses, a training loss that blows up, and a run that learns
nothing. Each raises tag_jax.errors.TrainingDiverged (exit status 3) with what to do.

`LossMonitor` watches every step's task losses without making the host wait on the device:
the loop hands it each step's losses (still on the device) and checks them in one transfer at
log steps, before checkpoints and at epoch ends.
"""

import dataclasses
import math
import os

import jax
import numpy as np

from tag_jax.errors import TrainingDiverged

# Divergence beyond NaN, checked where the loop has the numbers on the host: the summed training
# loss at a log step above LOSS_BLOWUP x its value at step 1; or, at an epoch end after
# max(CHANCE_MIN_STEPS, 3 / (1 - bn_momentum)) steps (batch-norm averages settled), every task's
# validation loss at least CHANCE_FRACTION x log(num_classes), no better than a uniform guess.
LOSS_BLOWUP = 4.0
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


def check_loss_blowup(loss: float, initial, step: int, config) -> None:
    """TrainingDiverged when the summed training loss is LOSS_BLOWUP times its step-1 value."""
    if initial and initial > 0 and loss > LOSS_BLOWUP * initial:
        raise TrainingDiverged(
            f"training loss {loss:.4g} at step {step} is {loss / initial:.3g}x its value "
            f"{initial:.4g} at step 1: the run diverged; "
            + RESTART_HINT.format(lr=config.optimizer.learning_rate)
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
    order; initial_loss: the summed training loss at step 1 (None until step 1 is checked)."""

    task_names: tuple
    workdir: str
    initial_loss: float = None
    pending: list = dataclasses.field(default_factory=list)

    def add(self, step: int, task_losses) -> None:
        self.pending.append((step, task_losses))

    def check(self, last_saved=None, up_to: float = math.inf) -> None:
        """Fetches the losses of the pending steps up to step `up_to` (one transfer, not one per
        step), raises TrainingDiverged at the first non-finite one (check_finite; last_saved: the
        step of the latest checkpoint) and records the step-1 loss."""
        checked = [entry for entry in self.pending if entry[0] <= up_to]
        if not checked:
            return
        values = jax.device_get([losses for _, losses in checked])
        for (step, _), task_loss in zip(checked, values):
            check_finite(np.asarray(task_loss), self.task_names, step, self.workdir, last_saved)
        if checked[0][0] == 1:  # the starting value divergence is measured against
            self.initial_loss = float(np.sum(values[0]))
        del self.pending[: len(checked)]
