"""Reading candidate networks (``networks.Network``) from a CSV file.

Format: a header with ``tasks``, ``cost`` and one column per task name; each row is a
network, ``tasks`` its task names joined by '+' (or '|'), then its cost, then its loss in
the column of each task it outputs and an empty cell in the others. Example::

    tasks,cost,depth,normal
    depth,0.5,0.17,
    depth+normal,1,0.16,0.09
"""

import csv
import re

from .networks import Network


def _network_from_row(row, task_columns, line):
    """A Network from one CSV row (a dict), or ValueError naming the line."""
    names = [t.strip() for t in re.split(r"[+|]", row.get("tasks") or "") if t.strip()]
    unknown = [t for t in names if t not in task_columns]
    if not names or unknown:
        raise ValueError(
            f"line {line}: unknown or missing task names {unknown or row.get('tasks')!r}"
        )
    filled = {t for t in task_columns if (row.get(t) or "").strip()}
    if filled != set(names):
        raise ValueError(f"line {line}: losses given for {sorted(filled)} but tasks are {names}")
    try:
        losses = {t: float(row[t]) for t in names}
        cost = float(row.get("cost") or "")
    except ValueError as error:
        raise ValueError(f"line {line}: {error}") from None
    try:
        return Network(tuple(names), losses, cost)
    except ValueError as error:
        raise ValueError(f"line {line}: {error}") from None


def load_networks(path):
    """Networks from a CSV file (format in the module docstring).

    Raises OSError if unreadable and ValueError if malformed (including text
    that is not UTF-8 and what the csv module rejects).
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
            if "tasks" not in header or "cost" not in header:
                raise ValueError(
                    f"{path}: the header needs 'tasks' and 'cost' columns, got {header}"
                )
            task_columns = [c for c in header if c not in ("tasks", "cost")]
            networks = [_network_from_row(row, task_columns, reader.line_num) for row in reader]
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error})") from None
        except csv.Error as error:
            raise ValueError(f"{path}: {error} (after line {reader.line_num})") from None
    if not networks:
        raise ValueError(f"{path}: no networks")
    return networks
