"""Atomic JSON outputs, metrics.jsonl upkeep and the lines of a run's answer."""

import json
import os
import re
import tempfile
import textwrap

import jax
import numpy as np

from selection import confidence

# The name of the temporary file an atomic write renames (tempfile's, prefix "." and suffix
# ".tmp"): one left behind by a killed write is removed by the next run (tag_jax.manifest).
TEMPORARY = re.compile(r"\.[a-z0-9_]{8}\.tmp")


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON to a temporary file in the same folder, then renames it: never half-written.
    The file gets the usual mode (0644 under umask 022), like the plots."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".", suffix=".tmp", delete=False) as f:
        json.dump(obj, f, indent=1, default=_to_builtin)
    _replace_with_usual_mode(f.name, path)


def write_npz_atomic(path: str, **arrays) -> None:
    """Writes numpy arrays as an .npz like write_json_atomic: a temporary file renamed over path."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile(
        "wb", dir=folder, prefix=".", suffix=".tmp", delete=False
    ) as f:
        np.savez(f, **arrays)
    _replace_with_usual_mode(f.name, path)


def write_text_atomic(path: str, text: str) -> None:
    """Writes text like write_json_atomic: a temporary file renamed over path."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".", suffix=".tmp", delete=False) as f:
        f.write(text)
    _replace_with_usual_mode(f.name, path)


def _replace_with_usual_mode(temporary: str, path: str) -> None:
    """Renames temporary to path with mode 0666 minus the umask (tempfile creates 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def _to_builtin(value):
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def count_records(path: str):
    """Lines (records) of a .jsonl file, 0 if it does not exist."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def truncate_jsonl(path: str, last_step: int, keep_records=None) -> None:
    """Keeps the first `keep_records` records (those logged before the checkpoint a run resumes
    from; None = all) and, of them, those with step <= `last_step`: whatever a resumed run redoes
    is logged once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    if keep_records is not None:
        lines = lines[:keep_records]
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):  # a line cut short by a kill
            continue
    with tempfile.NamedTemporaryFile(
        "w", dir=os.path.dirname(path), prefix=".", suffix=".tmp", delete=False
    ) as f:
        f.writelines(kept)
    _replace_with_usual_mode(f.name, path)


def did_not_learn_line(results: dict) -> str:
    """The warning for a run whose validation Total Error is not clearly below the baseline's."""
    return (
        f"WARNING: the run did not learn: validation Total Error "
        f"{results['validation']['total_error']:.2f} is not clearly below "
        f"{results['majority_baseline']['validation']['total_error']:.2f}, what answering each "
        "task's most frequent class scores; its groups and numbers are not findings. Try "
        "another config.optimizer.learning_rate, more steps (config.min_train_steps) or the "
        "configs/npz_mtl.py recipe (batch-norm momentum 0.9)"
    )


WRAP_WIDTH = 100  # characters of a long answer line's pieces (a longer folder name stays whole)


def wrapped(text: str, first: str = "") -> list[str]:
    """`first` (kept whole) and `text` in lines of at most WRAP_WIDTH characters, the later
    ones indented by 2."""
    return textwrap.wrap(
        text,
        WRAP_WIDTH,
        initial_indent=first,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def answer_lines(results: dict, workdir: str) -> list[str]:
    """What a run found, for the console: test Total Error next to the majority baseline's, a
    warning when the run did not learn, the groups that served the tasks, each selection (k,
    groups, score, proof gap and, when resampled, confidence) the method made with each
    confidence's verdict, and the files written (the warning and the files wrapped)."""
    restored = (
        f", parameters of epoch {results['restored_epoch']}"
        if results.get("restored_epoch") not in (None, results["epochs"])
        else ""
    )
    lines = [
        "",
        f"{results['method']}: test Total Error {results['test']['total_error']:.2f} "
        f"(sum over {len(results['tasks'])} tasks of error %; always answering the majority "
        f"class: {results['majority_baseline']['test']['total_error']:.2f}), "
        f"{results['epochs']} epochs{restored}",
    ]
    if not results["learned"]:
        lines.extend(wrapped(did_not_learn_line(results)))
    if len(results["groups"]) > 1:
        lines.append("served by: " + " ".join("{" + ", ".join(g) + "}" for g in results["groups"]))
    selections = results.get("outputs", {}).get("selections", [])
    lines.extend(selection_lines(selections))
    files = sorted(
        name
        for name in os.listdir(workdir)
        if name.endswith((".json", ".png")) and not name.startswith(".")  # the manifest
    )
    written = f"{', '.join(files)} (and metrics.jsonl, TensorBoard events, checkpoints/)"
    return lines + wrapped(written, first=f"results in {workdir}: ")


EXPLANATION_WIDTH = 200  # characters of a verdict's explanation line, at most


def selection_lines(selections: list[dict]) -> list[str]:
    """The table of selections (k, score, gap, confidence when resampled, groups), then one line
    per resampled k saying what its confidence means (selection.confidence.explanation, cut to
    EXPLANATION_WIDTH characters)."""
    if not selections:
        return []
    resampled = all("confidence" in s for s in selections)
    lines = [
        f"{'k':>3}  {'score':>10}  {'gap':>6}  " + ("confidence  " if resampled else "") + "groups"
    ]
    for s in selections:
        score = "-" if s["score"] is None else f"{s['score']:.4g}"
        gap = "-" if s["gap"] is None else f"{s['gap']:.3g}"
        sure = f"{s['confidence']:>10.2f}  " if resampled else ""
        lines.append(
            f"{s['max_groups']:>3}  {score:>10}  {gap:>6}  {sure}"
            + " ".join("{" + ", ".join(g) + "}" for g in s["groups"])
        )
    if resampled:
        for s in selections:
            line = f"k={s['max_groups']} {confidence.explanation(s)}"
            cut = line[: EXPLANATION_WIDTH - 3] + "..."
            lines.append(line if len(line) <= EXPLANATION_WIDTH else cut)
        lines.append("how sure is the grouping: grouping_confidence.png, docs/confidence.md")
    return lines
