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

from absl import logging

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
