"""Orbax checkpoints of the train state plus a JSON record of the host-side loop state.

A checkpoint holds `state` (the TrainState pytree: params, batch stats, optimizer
state, step, best parameters, method accumulators) and `meta` (data-stream
position `{'epoch', 'batch'}`, early-stopping record, per-epoch history). The
per-step RNG is `fold_in(seed, step)`, so the step restores it too.

Saving is synchronous (the loop waits for every save anyway): a failed write is
an error in the calling thread, never a background thread that keeps the
process alive. After each save, `checksums.json` in the step's folder holds the
sha256 of every file of the step; a restore verifies them and rejects
non-finite values, so a damaged checkpoint is an error naming its folder, not a
run that continues from garbage.
"""

import hashlib
import json
import logging as std_logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from tag_jax import reporting
from tag_jax.errors import UserError

CHECKSUMS = "checksums.json"


class CheckpointError(UserError):
    """A checkpoint could not be written, or read back intact."""


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """The manager of workdir/checkpoints (created if missing); CheckpointError if it cannot be
    (a file of that name, too: the run would start over and cut its metrics)."""
    folder = os.path.join(os.path.abspath(workdir), "checkpoints")
    if os.path.lexists(folder) and not os.path.isdir(folder):  # else: no checkpoint, start over
        raise CheckpointError(
            f"{folder} is a file, not the folder of the run's checkpoints; move it away, or use "
            "another --workdir"
        )
    try:
        return ocp.CheckpointManager(
            folder,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
        )
    except Exception as e:  # orbax raises many types for an unusable folder
        raise CheckpointError(
            f"cannot use the checkpoints folder {folder} ({_reason(e)}); make it "
            "a writable folder, or use another --workdir"
        ) from e


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(os.fspath(manager.directory), str(step))


def _reason(error: BaseException) -> str:
    """The error in one line; tensorstore's RESOURCE_EXHAUSTED on a local write named as what it
    is, a full disk."""
    text = " ".join(str(error).split())
    full = (
        "No space left on device: "
        if "RESOURCE_EXHAUSTED: Error writing local file" in text
        else ""
    )
    return f"{full}{type(error).__name__}: {text[:200]}"


class _HeldErrors(std_logging.Filter):
    """Holds the ERROR records orbax's background threads log (with a traceback) while a save
    runs: a failed save is reported once, in one line, by `save`; a save that succeeds despite
    them logs them afterwards."""

    def __init__(self):
        super().__init__()
        self.records = []

    def filter(self, record):
        if record.levelno >= std_logging.ERROR and "orbax" in record.pathname:
            self.records.append(record)
            return False
        return True


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Saves (state, meta) as step `step` and its checksums; CheckpointError if anything fails."""
    held, logger = _HeldErrors(), logging.get_absl_logger()
    logger.addFilter(held)
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        manager.wait_until_finished()
        if jax.process_index() == 0:
            folder = step_dir(manager, step)
            reporting.write_json_atomic(os.path.join(folder, CHECKSUMS), file_checksums(folder))
    except Exception as e:  # orbax and tensorstore raise many types for a failed write
        raise CheckpointError(
            f"cannot write checkpoint {step_dir(manager, step)} ({_reason(e)}); free disk space or "
            f"make {manager.directory} writable, then re-run to resume from the last checkpoint"
        ) from e
    finally:
        logger.removeFilter(held)
    for record in held.records:  # the save succeeded: nothing hides what orbax said
        logger.handle(record)


def file_checksums(folder: str) -> dict:
    """{path relative to folder: sha256 hex} of every file under folder but the checksums file
    (and a killed atomic write's temporary file)."""
    sums = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative == CHECKSUMS or reporting.TEMPORARY.fullmatch(name):  # a killed write's
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            sums[relative] = digest.hexdigest()
    return dict(sorted(sums.items()))


def verify_checksums(folder: str) -> None:
    """CheckpointError when a file of the step differs from, or lacks, its saved checksum."""
    path = os.path.join(folder, CHECKSUMS)
    if not os.path.exists(path):  # saved by an older version, or killed before the checksums
        logging.warning("Checkpoint %s has no %s; restoring it unverified.", folder, CHECKSUMS)
        return
    try:
        with open(path) as f:
            expected = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise _damaged(folder, f"{CHECKSUMS} is unreadable ({' '.join(str(e).split())})") from e
    if not (isinstance(expected, dict) and all(isinstance(v, str) for v in expected.values())):
        raise _damaged(folder, f"{CHECKSUMS} is not an object of file names and sha256 digests")
    actual = file_checksums(folder)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            raise _damaged(folder, f"{name} is missing")
        if expected.get(name) != actual[name]:
            raise _damaged(folder, f"{name} differs from its checksum")


def _damaged(folder: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {folder} is damaged ({what}); delete that folder to resume "
        "from an earlier one, or re-run with --restart to start over"
    )


@jax.jit
def all_finite(tree) -> jax.Array:
    """() bool: no NaN or infinity in any floating-point leaf of tree."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def restore_latest(manager: ocp.CheckpointManager, state_template, read_meta=dict):
    """(state, read_meta(meta)) of the latest checkpoint, or None when there is none;
    CheckpointError when it cannot be read, fails its checksums, holds non-finite values, or its
    meta is not a JSON object that read_meta accepts (read_meta raises KeyError, TypeError or
    ValueError for a missing key or a value of the wrong type)."""
    try:
        step = manager.latest_step()
    except Exception as e:  # an unreadable checkpoints folder
        raise CheckpointError(
            f"cannot list the checkpoints in {manager.directory} ({_reason(e)}); "
            "make that folder readable, or use another --workdir"
        ) from e
    if step is None:
        return None
    folder = step_dir(manager, step)
    verify_checksums(folder)
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state_template), meta=ocp.args.JsonRestore()
            ),
        )
    except Exception as e:  # orbax raises many types for unreadable or mismatched files
        raise CheckpointError(
            f"checkpoint {folder} cannot be restored ({_reason(e)}); delete that "
            "folder to resume from an earlier one, or use a new --workdir"
        ) from e
    if not bool(np.asarray(all_finite(restored.state))):
        raise _damaged(folder, "it holds NaN or infinite values")
    try:
        if not isinstance(restored.meta, dict):
            raise TypeError(f"a JSON {type(restored.meta).__name__}, not an object")
        meta = read_meta(restored.meta)
    except (KeyError, TypeError, ValueError) as e:
        reason = f"missing {e}" if isinstance(e, KeyError) else " ".join(str(e).split())
        raise _damaged(
            folder, f"its loop record (meta) is not one this version writes: {reason}"
        ) from e
    return restored.state, meta
