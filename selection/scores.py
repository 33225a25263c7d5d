"""Reading and validating pairwise score tables.

Orientation used throughout this package: ``matrix[i][j]`` (or
``scores[t][u]``) is the score ONTO task i (t) FROM task j (u), as in the
network-selection notebooks. tag_jax's ``affinity.json`` stores the opposite,
``matrix[source][target]``: use ``from_affinity_matrix`` (or ``load_scores``,
which reads the file's ``orientation`` field) to transpose it. The
``pairs.json`` of tag_jax's HOA 'pairs' method holds several tables
``{t: {u: value of t in the network trained on {t, u}}}`` (diagonal: t alone),
already onto t from u; ``load_scores`` reads one of them (``PAIRS_KEYS``).
"""

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

SOURCE_TARGET = "matrix[source][target]"
TARGET_SOURCE = "matrix[target][source]"
PAIRS_KEYS = ("validation_loss", "validation_error", "test_loss", "test_error")
DEFAULT_PAIRS_KEY = "validation_loss"


def _checked_tasks(tasks):
    """The task names as a tuple of distinct strings."""
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("no tasks given")
    if not all(isinstance(t, str) for t in tasks):
        raise ValueError("task names must be strings")
    if len(set(tasks)) != len(tasks):
        raise ValueError("task names must be distinct")
    return tasks


def _as_array(matrix):
    """A float array, or ValueError if ``matrix`` is not a numeric table."""
    try:
        return np.array(matrix, dtype=float)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"score matrix is not numeric: {error}") from None


def _checked_square(tasks, array):
    """``array`` unless its shape is not (n, n) for the n tasks (ValueError, in the shape given)."""
    n = len(tasks)
    if array.shape != (n, n):
        raise ValueError(
            f"score matrix has shape {array.shape}, expected ({n}, {n}): one row "
            f"and one column per task, for the {n} tasks {list(tasks)}"
        )
    return array


def _checked_matrix(tasks, matrix):
    """(n, n) float array; off-diagonal entries must be finite numbers."""
    array = _checked_square(tasks, _as_array(matrix))
    n = len(tasks)
    off_diagonal = ~np.eye(n, dtype=bool)
    if not np.isfinite(array[off_diagonal]).all():
        i, j = np.argwhere(~np.isfinite(array) & off_diagonal)[0]
        raise ValueError(f"score onto {tasks[i]!r} from {tasks[j]!r} is not a finite number")
    return array


def _table_from_mapping(scores):
    """(tasks, matrix) from ``scores[t][u]``; a missing diagonal becomes NaN."""
    tasks = _checked_tasks(scores)
    index = {t: i for i, t in enumerate(tasks)}
    matrix = np.full((len(tasks), len(tasks)), np.nan)
    for t, row in scores.items():
        if not isinstance(row, Mapping):
            raise ValueError(f"scores[{t!r}] must map task names to scores")
        for u, value in row.items():
            if u not in index:
                raise ValueError(f"scores[{t!r}] names unknown task {u!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"score onto {t!r} from {u!r} is not a number: {value!r}")
            try:
                matrix[index[t], index[u]] = value
            except OverflowError:  # an integer beyond the float range
                raise ValueError(f"score onto {t!r} from {u!r} is not a finite number") from None
        missing = [u for u in tasks if u != t and u not in row]
        if missing:
            raise ValueError(f"missing score onto {t!r} from {missing[0]!r}")
    return tasks, _checked_matrix(tasks, matrix)


def score_table(scores):
    """Validate ``scores`` into (tasks, matrix), matrix[i][j] onto i from j.

    ``scores`` is a mapping ``scores[t][u]`` (onto t from u) or a pair
    ``(tasks, matrix)`` in the same orientation. Every off-diagonal entry must
    be a finite number; the diagonal (single-task values) may be absent or
    NaN. Raises ValueError naming the offending entry.
    """
    if isinstance(scores, Mapping):
        return _table_from_mapping(scores)
    if isinstance(scores, Sequence) and not isinstance(scores, str) and len(scores) == 2:
        tasks = _checked_tasks(scores[0])
        return tasks, _checked_matrix(tasks, scores[1])
    raise ValueError("scores must be a mapping scores[t][u] or a pair (tasks, matrix)")


def from_affinity_matrix(tasks, matrix_source_target):
    """(tasks, matrix onto-from) from a ``matrix[source][target]`` table (tag_jax's
    affinity.json), i.e. the transpose."""
    tasks = _checked_tasks(tasks)
    return tasks, _checked_matrix(tasks, _checked_square(tasks, _as_array(matrix_source_target)).T)


def transposed(table):
    """The (tasks, matrix) table with rows and columns swapped."""
    tasks, matrix = table
    return tasks, matrix.T.copy()


def _nulls_to_nan(rows):
    """A list of rows with None (JSON null) entries replaced by NaN; anything
    else is left for ``_as_array`` to reject."""
    if not isinstance(rows, list):
        return rows
    return [
        [math.nan if v is None else v for v in row] if isinstance(row, list) else row
        for row in rows
    ]


def _is_pairs_file(document):
    """Whether a JSON object is a pairs.json: a list of ``tasks`` and tables."""
    return (
        "matrix" not in document
        and isinstance(document.get("tasks"), list)
        and any(key in document for key in PAIRS_KEYS)
    )


def _pairs_table(document, pairs_key):
    """(tasks, matrix onto-from) of the table ``pairs_key`` of a pairs.json, in
    the order of its ``tasks``."""
    tasks = _checked_tasks(document["tasks"])
    if pairs_key not in document:
        present = [key for key in PAIRS_KEYS if key in document]
        raise ValueError(f"pairs file has no {pairs_key!r} table (it has {', '.join(present)})")
    table = document[pairs_key]
    if not isinstance(table, Mapping):
        raise ValueError(f"pairs file's {pairs_key!r} must map task names to scores")
    if set(table) != set(tasks):
        raise ValueError(
            f"pairs file's {pairs_key!r} has tasks {sorted(map(str, table))}, "
            f"but its 'tasks' are {list(tasks)}"
        )
    return score_table({t: table[t] for t in tasks})


def parse_scores(document, *, transpose=False, pairs_key=None):
    """(tasks, matrix onto-from) from a decoded JSON document.

    Either tag_jax's affinity.json (``tasks``, ``matrix`` and an
    ``orientation`` of "matrix[source][target]", transposed here, or
    "matrix[target][source]"), its pairs.json (``tasks`` and the tables of
    ``PAIRS_KEYS``, each ``{t: {u: value of t trained with u}}``: the table
    ``pairs_key``, default "validation_loss", as it is) or a dict of dicts
    ``{t: {u: score onto t from u}}``; ``transpose`` flips the dict-of-dicts
    form only.
    """
    if not isinstance(document, dict):
        raise ValueError("scores JSON must be an object")
    if pairs_key is not None and pairs_key not in PAIRS_KEYS:
        raise ValueError(f"pairs_key must be one of {PAIRS_KEYS}, got {pairs_key!r}")
    pairs = _is_pairs_file(document)
    if pairs_key is not None and not pairs:
        raise ValueError(
            "a pairs key only applies to a pairs.json (with 'tasks' and "
            f"{' / '.join(PAIRS_KEYS)} tables)"
        )
    if pairs:
        if transpose:
            raise ValueError("a pairs file is already onto t from u; do not transpose it")
        return _pairs_table(document, pairs_key or DEFAULT_PAIRS_KEY)
    if "matrix" not in document:
        table = score_table(document)
        return transposed(table) if transpose else table
    if transpose:
        raise ValueError("an affinity file states its own orientation; do not transpose it")
    orientation = document.get("orientation")
    tasks, matrix = document.get("tasks"), _nulls_to_nan(document["matrix"])
    if not isinstance(tasks, list):
        raise ValueError("affinity file has no list of tasks")
    if orientation == SOURCE_TARGET:
        return from_affinity_matrix(tasks, matrix)
    if orientation == TARGET_SOURCE:
        return score_table((tasks, matrix))
    raise ValueError(
        f"affinity file orientation must be {SOURCE_TARGET!r} or {TARGET_SOURCE!r}, "
        f"got {orientation!r}"
    )


def _object_without_repeated_keys(pairs):
    """A JSON object as a dict; ValueError when a key repeats (the decoder would keep the last
    one silently, and drop a task's scores)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {repeated!r} appears twice in one JSON object")
    return document


def load_scores(path, *, transpose=False, pairs_key=None):
    """(tasks, matrix onto-from) from a JSON file, as ``parse_scores``.

    Raises OSError if unreadable and ValueError if malformed (including JSON
    nested too deeply for the parser and text that is not UTF-8).
    """
    with open(path, encoding="utf-8") as handle:
        try:
            document = json.load(handle, object_pairs_hook=_object_without_repeated_keys)
        except RecursionError:
            raise ValueError(f"{path}: JSON nested too deeply to read") from None
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, too many digits
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    return parse_scores(document, transpose=transpose, pairs_key=pairs_key)
