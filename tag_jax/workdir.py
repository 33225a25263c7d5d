"""One run per workdir: an advisory lock, the run's identity, and starting over (--restart).

The lock is `flock` on `<workdir>/.lock`, held for as long as the run (or the
study) lives: the kernel releases it when the process ends, however it ends, so
a lock left by a killed process never blocks the next run. While held, the file
names the holder (pid, host, start time); a run that finds a holder's name in a
file it could lock knows that holder died without finishing, and says so.

A workdir holding a run (its config.json next to checkpoints, metrics or results) is resumed
only by a run with the same IDENTITY_KEYS; other changed settings are recorded (CHANGES).
What runs wrote there is listed in its manifest (tag_jax.manifest): a run refuses to overwrite
anything else, and --restart deletes exactly what is listed.
"""

import fcntl
import json
import os
import socket
import sys
import time

import jax
import numpy as np
from absl import logging

from tag_jax import config_checks, manifest, reporting
from tag_jax.errors import UserError

LOCK_FILE = manifest.LOCK_FILE


class Lock:
    """A held workdir lock; release() (or the process's end) frees it."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def acquire(workdir: str, flag: str = "--workdir") -> Lock:
    """Creates workdir if needed and locks it; UserError when another live process holds it."""
    path = os.path.join(workdir, LOCK_FILE)
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(
            f"cannot write to {flag} {workdir!r} ({e.strerror}); pick a writable folder"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder(fd)
        os.close(fd)
        raise UserError(
            f"{flag} {workdir} is in use by {holder}; wait for that run to end (or stop "
            f"it), or use another {flag}"
        ) from e
    previous = _holder(fd, default="")
    if previous:
        logging.warning(
            "The run before (%s) ended without releasing %s; continuing from what it saved.",
            previous,
            path,
        )
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return Lock(path, fd)


def _holder(fd: int, default: str = "another process") -> str:
    """'process <pid> on <host> since <time>' from the lock file's record, else default."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"process {record['pid']} on {record['host']} since {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return default


# Config keys that make a run what it is: a workdir holding checkpoints of a run with other values
# for them is not resumed (changing e.g. num_epochs or max_steps on a resume is fine).
IDENTITY_KEYS = ("method", "tasks", "seed", "dataset", "image_size", "model", "dtype", "batch_size")
# Keys that steer how a run is carried out, not what it computes: a change on a resume is not
# recorded (every other change is: `setting_changes`).
CONTROL_KEYS = (
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "prefetch_batches",
    "max_steps",
    "eval_batch_size",
    "autotune_budget_seconds",
    "mesh",
    "study",
)
# config.json's record of the settings a resume changed: [{'step', 'changes': {key: [old, new]}}].
CHANGES = "changed_on_resume"


def saved_config(workdir: str):
    """The config.json of the run `workdir` holds (checkpoints, metrics or results next to it),
    as a dict; None when it holds no run. UserError when it is unreadable or not a JSON object."""
    saved_path = os.path.join(workdir, "config.json")
    checkpoints = os.path.join(workdir, "checkpoints")
    holds_a_run = (
        (os.path.isdir(checkpoints) and os.listdir(checkpoints))
        or os.path.exists(os.path.join(workdir, "results.json"))
        or os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    )
    if not (os.path.exists(saved_path) and holds_a_run):
        return None
    try:
        with open(saved_path) as f:
            saved = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        reason = " ".join(str(e).split())
        raise UserError(
            f"{saved_path} is unreadable ({reason}); re-run with --restart to start over, "
            "or use a new --workdir"
        ) from e
    if not isinstance(saved, dict):
        raise UserError(
            f"{saved_path} is not a run's config (a JSON {type(saved).__name__}, not an object); "
            "re-run with --restart to start over, or use a new --workdir"
        )
    return saved


def as_json(config) -> dict:
    """config as config.json holds it (tuples as lists)."""
    return json.loads(json.dumps(config.to_dict(), default=list))


def flat(tree: dict, prefix: str = "") -> dict:
    """{'a.b': leaf} of nested dicts."""
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves.update(flat(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def _differing_leaves(saved: dict, config) -> dict:
    """{dotted key: [saved value, config's value]} of the leaves both hold that differ (a key
    one version has and the other lacks is not compared: versions add settings)."""
    before, after = flat(saved), flat(as_json(config))
    return {
        key: [before[key], after[key]]
        for key in sorted(set(before) & set(after))
        if before[key] != after[key]
    }


def _top_key(key: str) -> str:
    return key.split(".")[0]


def identity_changes(saved: dict, config) -> list:
    """The IDENTITY_KEYS under which config differs from the saved config."""
    differ = {_top_key(k) for k in _differing_leaves(saved, config)}
    return [k for k in IDENTITY_KEYS if k in differ]


def setting_changes(saved: dict, config) -> dict:
    """{dotted key: [saved value, config's value]} of the other leaves that differ, but for
    CONTROL_KEYS (and the saved record of earlier changes)."""
    skipped = IDENTITY_KEYS + CONTROL_KEYS + (CHANGES,)
    return {
        key: values
        for key, values in _differing_leaves(saved, config).items()
        if _top_key(key) not in skipped
    }


def check_same_run(workdir: str, config) -> None:
    """UserError when `workdir` holds a run (checkpoints, metrics or results) whose identity keys
    differ from config's."""
    saved = saved_config(workdir)
    differ = identity_changes(saved, config) if saved is not None else []
    if differ:
        shown = ", ".join(f"{k}={saved.get(k)!r}" for k in differ)
        raise UserError(
            f"--workdir {workdir} holds another run ({shown}); use a new --workdir, or "
            "re-run with --restart to delete it and start over"
        )


def check_outputs_are_ours(workdir: str, *, restart: bool) -> None:
    """UserError when the run would overwrite (or, with restart, delete in) a folder's files that
    no run of this project wrote (tag_jax.manifest)."""
    if restart:
        manifest.check_can_restart(workdir)
    else:
        manifest.check_not_foreign(workdir, manifest.RUN_OUTPUTS)


def check_workdir(workdir: str) -> None:
    """UserError for a workdir no run can use: a file, or a path too long for checkpoint files."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} is a file; pick a folder")
    config_checks.check_workdir_path(workdir)


def prepare_workdir(workdir: str, config, *, restart: bool = False):
    """Locks the workdir (process 0) and checks it holds this run (or, with restart, deletes what
    it holds); returns the lock (None on other processes)."""
    check_outputs_are_ours(workdir, restart=restart)  # before the lock, too: a refused run
    if not restart:  # leaves no trace
        check_same_run(workdir, config)
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = acquire(workdir)
            check_outputs_are_ours(workdir, restart=restart)
            if restart:
                deleted = manifest.remove_written(workdir)
                if deleted:
                    logging.info("--restart: deleted %s in %s.", ", ".join(deleted), workdir)
            else:
                check_same_run(workdir, config)
        except OSError as e:
            error = UserError(
                f"cannot write to --workdir {workdir!r} ({e.strerror}); pick a writable folder"
            )
        except UserError as e:
            error = e
        if error and lock:
            lock.release()
    if jax.process_count() > 1:  # every process stops if process 0 could not take the workdir
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

        ready = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not ready and error is None:
            error = UserError(
                f"process 0 could not prepare --workdir {workdir} (its error says why)"
            )
    if error:
        raise error
    return lock


def resume_changes(workdir: str, config, step: int) -> list:
    """The record of the settings that resumes changed (CHANGES: [{'step', 'changes': {key:
    [old, new]}}]): config.json's, plus this resume's at `step` when config changes any setting
    (setting_changes), which a warning line says."""
    saved = saved_config(workdir) or {}
    record = saved.get(CHANGES, [])
    if not (isinstance(record, list) and all(isinstance(r, dict) for r in record)):
        raise UserError(
            f"{os.path.join(workdir, 'config.json')} holds a damaged '{CHANGES}' record; "
            "re-run with --restart to start over, or use a new --workdir"
        )
    changes = setting_changes(saved, config) if saved else {}
    if not changes:
        return record
    logging.warning(
        "Resumed at step %d with changed settings: %s; steps before %d ran with the earlier "
        "values (config.json and results.json record it under '%s').",
        step,
        ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items()),
        step,
        CHANGES,
    )
    return record + [{"step": step, "changes": changes}]


def begin_writing(workdir: str, config, step: int, *, resumed: bool, metrics_records) -> list:
    """Once every check of the run passed (checkpoint restored or none found), its first writes:
    leftover temporary files removed, the outputs claimed in the manifest, config.json written
    (unless the workdir holds results and their config.json: those stay until new results replace
    both), metrics.jsonl cut back to `step` (and its first `metrics_records` records). Returns the
    record of changed settings (resume_changes; [] for a run that did not resume)."""
    changes = resume_changes(workdir, config, step) if resumed else []
    manifest.remove_temporaries(workdir)
    manifest.claim(workdir, manifest.RUN_OUTPUTS)
    if not (
        os.path.exists(os.path.join(workdir, "results.json"))
        and os.path.exists(os.path.join(workdir, "config.json"))
    ):
        write_config(workdir, config, changes)
    reporting.truncate_jsonl(
        os.path.join(workdir, "metrics.jsonl"), step, keep_records=metrics_records
    )
    return changes


def claim_event_files(workdir: str) -> None:
    """Adds the TensorBoard event files (their names are known once the writer made them)."""
    manifest.claim(
        workdir, [n for n in os.listdir(workdir) if n.startswith(manifest.EVENTS_PREFIX)]
    )


def write_config(workdir: str, config, changes=()) -> None:
    """The run's config as workdir/config.json (written atomically), with the settings earlier
    resumes changed (CHANGES) when there are any."""
    record = config.to_dict()
    if changes:
        record[CHANGES] = list(changes)
    reporting.write_json_atomic(os.path.join(workdir, "config.json"), record)
