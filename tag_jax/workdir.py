"""One run per workdir: an advisory lock, and starting over (--restart).

The lock is `flock` on `<workdir>/.lock`, held for as long as the run (or the
study) lives: the kernel releases it when the process ends, however it ends, so
a lock left by a killed process never blocks the next run. While held, the file
names the holder (pid, host, start time); a run that finds a holder's name in a
file it could lock knows that holder died without finishing, and says so.
"""

import fcntl
import json
import os
import shutil
import socket
import sys
import time

import jax
import numpy as np
from absl import logging

from tag_jax import config_checks, reporting
from tag_jax.errors import UserError

LOCK_FILE = ".lock"
# What a run writes at the top of its workdir (tag_jax.train and the methods' outputs).
OUTPUT_PATTERNS = (".json", ".png", ".jsonl", ".tmp")


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


def clear_outputs(workdir: str) -> list:
    """--restart: deletes what runs write in workdir (checkpoints/, TensorBoard events, and the
    .json, .jsonl, .png files at its top); returns the names deleted. Other files stay."""
    if not os.path.isdir(workdir):
        return []
    deleted = []
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name)
        if name == "checkpoints" and os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.isfile(path) and (
            name.endswith(OUTPUT_PATTERNS) or name.startswith("events.out.tfevents.")
        ):
            os.remove(path)
        else:
            continue
        deleted.append(name)
    return deleted


# Config keys that make a run what it is: a workdir holding checkpoints of a run with other values
# for them is not resumed (changing e.g. num_epochs or max_steps on a resume is fine).
IDENTITY_KEYS = ("method", "tasks", "seed", "dataset", "image_size", "model", "dtype", "batch_size")


def check_same_run(workdir: str, config) -> None:
    """UserError when `workdir` holds a run (checkpoints, metrics or results) whose identity keys
    differ from config's."""
    saved_path = os.path.join(workdir, "config.json")
    checkpoints = os.path.join(workdir, "checkpoints")
    holds_a_run = (
        (os.path.isdir(checkpoints) and os.listdir(checkpoints))
        or os.path.exists(os.path.join(workdir, "results.json"))
        or os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    )
    if not (os.path.exists(saved_path) and holds_a_run):
        return
    try:
        with open(saved_path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(
            f"{saved_path} is unreadable ({e}); re-run with --restart to start over, "
            "or use a new --workdir"
        ) from e
    current = json.loads(json.dumps(config.to_dict(), default=list))
    differ = [k for k in IDENTITY_KEYS if saved.get(k) != current.get(k)]
    if differ:
        shown = ", ".join(f"{k}={saved.get(k)!r}" for k in differ)
        raise UserError(
            f"--workdir {workdir} holds another run ({shown}); use a new --workdir, or "
            "re-run with --restart to delete it and start over"
        )


def check_workdir(workdir: str) -> None:
    """UserError for a workdir no run can use: a file, or a path too long for checkpoint files."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} is a file; pick a folder")
    config_checks.check_workdir_path(workdir)


def prepare_workdir(workdir: str, config, *, restart: bool = False):
    """Locks the workdir (process 0) and checks it holds this run (or, with restart, deletes what
    it holds); returns the lock (None on other processes)."""
    if not restart:
        check_same_run(workdir, config)  # before the lock, too: a refused run leaves no trace
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = acquire(workdir)
            if restart:
                deleted = clear_outputs(workdir)
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


def write_config(workdir: str, config) -> None:
    """The run's config as workdir/config.json (written atomically)."""
    reporting.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
