"""Orbax checkpoints of the train state plus a JSON record of the host-side loop state.

A checkpoint holds `state` (the TrainState pytree: params, batch stats, optimizer
state, step, best parameters, method accumulators) and `meta` (data-stream
position `{'epoch', 'batch'}`, early-stopping record, per-epoch history). The
per-step RNG is `fold_in(seed, step)`, so the step restores it too.
"""

import os

import orbax.checkpoint as ocp

from tag_jax.errors import UserError


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, state_template):
  """(state, meta) of the latest checkpoint, or None when there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state_template), meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types for unreadable or mismatched files
    path = os.path.join(manager.directory, str(step))
    reason = " ".join(str(e).split())[:200]
    raise UserError(f"checkpoint {path} cannot be restored ({type(e).__name__}: {reason}); "
                    "delete that folder to resume from an earlier one, or use a new --workdir") from e
  return restored.state, restored.meta
