"""What a run (or study) wrote in its folder: `.tag_jax_manifest.json`, so that nothing else is
ever deleted or overwritten.

The manifest lists the names, at the top of the folder, that runs of this project wrote or are
about to write: {"written_by": "tag_jax", "version": 1, "names": [...]}. A run claims its
outputs in it (`claim`, written atomically) before it creates them, so a kill at any moment
leaves no output that the manifest does not name; at its end the run `settle`s the list to what
exists. Then:
- a run refuses to start when the folder holds a file with the name of one of its outputs that
  the manifest does not list (`check_not_foreign`): it never overwrites what it did not write;
- --restart deletes exactly the names listed (`remove_written`; inside `checkpoints/` only the
  step folders and orbax's temporary ones, so a file of the user's there stays), and refuses a
  folder that holds files but no run of this project;
- leftover temporary files of this project's atomic writes (`.` + 8 characters + `.tmp`, see
  tag_jax.reporting.write_json_atomic) are removed by the next run (`remove_temporaries`).
A folder that a version without manifests wrote (a run's config.json of this project next to
checkpoints, metrics or results; a study's report.json next to its stages' folders) is
adopted: its known outputs count as written (`written`).
"""

import json
import os
import re
import shutil

from tag_jax import reporting
from tag_jax.errors import UserError

MANIFEST = ".tag_jax_manifest.json"
VERSION = 1
CHECKPOINTS = "checkpoints"
EVENTS_PREFIX = "events.out.tfevents."
# The names a training run may write at the top of its workdir: the loop's, then the methods'
# (a method that writes another file adds its name here).
RUN_OUTPUTS = (
    "config.json",
    "results.json",
    "metrics.jsonl",
    CHECKPOINTS,
    "affinity.json",
    "affinity.png",
    "affinity_over_time.png",
    "affinity_blocks.npz",
    "groups.json",
    "groups.png",
    "grouping_confidence.png",
    "groups_trained.json",
    "pairs.json",
    "dmtg_assignment.png",
)
# The names a study writes at the top of its folder, besides its stages' (and seeds') folders.
STUDY_OUTPUTS = ("report.json", "report.md", "total_error_vs_compute.png")
# Inside checkpoints/: orbax's step folders and its temporary ones.
CHECKPOINT_STEP = re.compile(r"\d+(\.orbax-checkpoint-tmp.*)?")
LOCK_FILE = ".lock"


def _path(folder: str) -> str:
    return os.path.join(folder, MANIFEST)


def _read(folder: str):
    """The manifest's names, or None when the folder has no manifest; UserError when it is
    damaged."""
    path = _path(folder)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise _damaged(path, " ".join(str(e).split())) from e
    if not (
        isinstance(record, dict)
        and record.get("written_by") == "tag_jax"
        and isinstance(record.get("names"), list)
        and all(_is_plain_name(n) for n in record["names"])
    ):
        raise _damaged(path, "not a manifest of this version")
    return list(record["names"])


def _is_plain_name(name) -> bool:
    """A name directly in the folder (no path separator, not '.' or '..')."""
    return isinstance(name, str) and name not in ("", ".", "..") and os.sep not in name


def _damaged(path: str, why: str) -> UserError:
    return UserError(
        f"{path} is damaged ({why}): it lists what runs wrote in that folder; use a new "
        "--workdir, or delete the folder's outputs yourself and then that file"
    )


def _read_object(path: str):
    """The JSON object in path, or None when it is missing, unreadable or not an object."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _legacy(folder: str) -> list:
    """What a version without manifests left in folder, present: a run's outputs (its
    config.json a JSON object with 'method' and 'dataset', next to checkpoints, metrics or
    results), or a study's (its report.json an object with 'rows' and 'stages', next to the
    folders of its stages' runs and its seed folders); [] when there is neither."""
    config = _read_object(os.path.join(folder, "config.json")) or {}
    if {"method", "dataset"} <= set(config):
        present = [n for n in RUN_OUTPUTS if os.path.exists(os.path.join(folder, n))]
        if {"checkpoints", "results.json", "metrics.jsonl"} & set(present):
            events = sorted(n for n in os.listdir(folder) if n.startswith(EVENTS_PREFIX))
            return present + events
    report = _read_object(os.path.join(folder, "report.json")) or {}
    if not {"rows", "stages"} <= set(report):
        return []
    runs = [n for n in sorted(os.listdir(folder)) if _holds_runs(os.path.join(folder, n))]
    return [n for n in STUDY_OUTPUTS if os.path.exists(os.path.join(folder, n))] + runs


def _holds_runs(path: str) -> bool:
    """A run's folder, or a study's seed folder (seed_<i>) holding runs' folders."""
    if not os.path.isdir(path):
        return False
    if written(path) is not None:
        return True
    return bool(re.fullmatch(r"seed_\d+", os.path.basename(path))) and any(
        written(os.path.join(path, n)) is not None for n in os.listdir(path)
    )


def written(folder: str):
    """The names runs of this project wrote in folder (the manifest's, or a legacy run's
    outputs), or None when it holds no run of this project."""
    if not os.path.isdir(folder):
        return None
    names = _read(folder)
    if names is None:
        names = _legacy(folder) or None
    return names


def check_not_foreign(folder: str, names, flag: str = "--workdir") -> None:
    """UserError when folder holds one of `names` that no run of this project wrote there."""
    mine = set(written(folder) or ())
    for name in names:
        path = os.path.join(folder, name)
        empty_folder = os.path.isdir(path) and not os.listdir(path)  # nothing to overwrite
        if name not in mine and os.path.lexists(path) and not empty_folder:
            raise UserError(
                f"{flag} {folder} holds {name}, which no run of tag_jax wrote there (it is not in "
                f"{MANIFEST}): a run never overwrites it; move it away, or use another {flag}"
            )


def _write(folder: str, names) -> None:
    record = {"written_by": "tag_jax", "version": VERSION, "names": sorted(set(names))}
    reporting.write_json_atomic(_path(folder), record)


def claim(folder: str, names) -> None:
    """Adds `names` to folder's manifest (created with the folder if missing) before they are
    written; writes nothing when it lists them already."""
    before = written(folder) or []
    if os.path.exists(_path(folder)) and set(names) <= set(before):
        return
    os.makedirs(folder, exist_ok=True)
    _write(folder, set(before) | set(names))


def settle(folder: str, new_names=()) -> None:
    """The manifest lists what exists of it, plus `new_names` (outputs whose names are not known
    in advance, e.g. TensorBoard's event files)."""
    names = [n for n in written(folder) or [] if os.path.lexists(os.path.join(folder, n))]
    _write(folder, set(names) | set(new_names))


def is_bare(folder: str) -> bool:
    """True for a missing folder, or one that holds nothing but the lock file and a manifest."""
    return not os.path.isdir(folder) or set(os.listdir(folder)) <= {LOCK_FILE, MANIFEST}


def check_can_restart(folder: str, flag: str = "--workdir") -> None:
    """UserError for a folder that holds files but no run of this project: --restart would not
    know what to delete."""
    if written(folder) is None and not is_bare(folder):
        raise UserError(
            f"--restart: {flag} {folder} holds files but no run of tag_jax (no {MANIFEST}); "
            "it deletes only what a run wrote: use a new or empty folder"
        )


def remove_written(folder: str, flag: str = "--workdir") -> list:
    """--restart: deletes what runs of this project wrote in folder (inside checkpoints/, the step
    folders only) and empties the manifest; returns the names deleted. UserError, before
    deleting anything, for a folder that holds files but no run of this project."""
    check_can_restart(folder, flag)
    names = written(folder)
    if names is None:
        return []
    deleted = []
    for name in sorted(names):
        path = os.path.join(folder, name)
        if not os.path.lexists(path):
            continue
        if name == CHECKPOINTS and os.path.isdir(path) and not os.path.islink(path):
            _remove_checkpoints(path)
        elif os.path.isdir(path) and not os.path.islink(path):
            _remove_folder(path, flag)
        else:
            os.remove(path)
        deleted.append(name)
    remove_temporaries(folder)
    _write(folder, [])
    return deleted


def _remove_folder(path: str, flag: str) -> None:
    """A folder a run wrote (a study's stage or seed folder): what its own manifest lists, then
    the folder if nothing else is left in it; without a manifest, all of it."""
    if written(path) is None:
        shutil.rmtree(path)
        return
    remove_written(path, flag)
    if is_bare(path):
        shutil.rmtree(path)


def _remove_checkpoints(path: str) -> None:
    """The step folders (and orbax's temporary ones) in checkpoints/; the folder too if that
    empties it."""
    for name in os.listdir(path):
        if CHECKPOINT_STEP.fullmatch(name):
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)
    if not os.listdir(path):
        os.rmdir(path)


def remove_temporaries(folder: str) -> list:
    """Deletes this project's leftover temporary files (a write killed before its rename) at the
    top of folder and in its checkpoint step folders; returns their paths."""
    folders = [folder]
    checkpoints = os.path.join(folder, CHECKPOINTS)
    if os.path.isdir(checkpoints):
        folders += [
            os.path.join(checkpoints, n)
            for n in sorted(os.listdir(checkpoints))
            if CHECKPOINT_STEP.fullmatch(n)
        ]
    removed = []
    for place in folders:
        for name in sorted(os.listdir(place)) if os.path.isdir(place) else ():
            path = os.path.join(place, name)
            if (
                reporting.TEMPORARY.fullmatch(name)
                and os.path.isfile(path)
                and not os.path.islink(path)
            ):
                os.remove(path)
                removed.append(path)
    return removed
