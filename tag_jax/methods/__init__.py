"""Training methods behind `config.method`: each builds a `Method` the shared loop in train.py runs.

A method owns its model, optimizer and steps; the loop owns data, evaluation
schedule, early stopping, checkpoints and metrics. To add one, write a module
with `validate(config)` and `build(config, task_names, image_shape,
steps_per_epoch) -> Method` and register it in `_MODULES`.
"""

import dataclasses
import importlib
from typing import Callable, Optional

from tag_jax.errors import UserError

# config.method -> module in tag_jax.methods
_MODULES = {"mtl": "mtl", "tag": "affinity_methods", "cs": "affinity_methods",
            "uw": "baselines", "gradnorm": "baselines", "pcgrad": "baselines",
            "dmtg": "dmtg", "groups": "groups", "pairs": "groups", "random": "groups"}
METHODS = tuple(_MODULES)


@dataclasses.dataclass(frozen=True)
class Method:
  """What the loop needs from a method.

  init_state(rng) -> steps.TrainState.
  train_step(state, batch) -> (state, metrics); metrics has 'loss' () and 'task_losses' (T,).
  eval_step(params, batch_stats, batch) -> {'loss_sum': (T,), 'correct': (T,), 'count': ()}.
  measured_step: like train_step, run instead of it when step % measure_every == 0.
  on_epoch_end(state, meta) -> state: host-side bookkeeping before the epoch checkpoint.
  finish(workdir, state, meta) -> dict: writes the method's outputs (process 0), returns a summary.
  state_sharding(mesh): sharding (pytree prefix) of the state; None = replicated everywhere.
  """

  init_state: Callable
  train_step: Callable
  eval_step: Callable
  measured_step: Optional[Callable] = None
  measure_every: int = 1
  on_epoch_end: Optional[Callable] = None
  finish: Optional[Callable] = None
  state_sharding: Optional[Callable] = None


def _module(name: str):
  if name not in _MODULES:
    raise UserError(f"unknown config.method {name!r}; choose one of {METHODS}")
  return importlib.import_module(f"tag_jax.methods.{_MODULES[name]}")


def validate(config) -> None:
  _module(config.method).validate(config)


def build(config, task_names, image_shape, steps_per_epoch: int) -> Method:
  return _module(config.method).build(config, task_names, image_shape, steps_per_epoch)
