"""Turning pairwise task scores into task groups (numpy and scipy only).

``select_groups`` chooses at most k overlapping groups from a table of scores
ONTO one task FROM another (TAG / CS affinities, maximised; HOA pairwise errors
or losses, minimised). tag_jax's affinity.json stores rows as sources: read it
with ``load_scores`` or transpose it with ``from_affinity_matrix``.
``select_networks`` is Standley et al.'s budgeted choice among trained
networks (a ``NetworkSelection``: the list of chosen networks, its total, proof
gap and the tasks it leaves uncovered; ``cover_all=True`` admits only selections
that cover every task, ``covering_budget`` is the least budget that has one) and
``hoa_approximation`` their higher-order approximation.
``python -m selection`` is the command line (``selection.cli``).
"""

from .groups import Progress, Selection, select_groups
from .network_files import load_networks
from .networks import (
    UNCOVERED_LOSS,
    BudgetTooSmall,
    Network,
    NetworkSelection,
    best_losses,
    covering_budget,
    hoa_approximation,
    matching_networks,
    rescore,
    select_networks,
    task_order,
    total_loss,
)
from .scores import from_affinity_matrix, load_scores, parse_scores, score_table, transposed

__all__ = [
    "UNCOVERED_LOSS",
    "BudgetTooSmall",
    "Network",
    "NetworkSelection",
    "Progress",
    "Selection",
    "best_losses",
    "covering_budget",
    "from_affinity_matrix",
    "hoa_approximation",
    "load_networks",
    "load_scores",
    "matching_networks",
    "parse_scores",
    "rescore",
    "score_table",
    "select_groups",
    "select_networks",
    "task_order",
    "total_loss",
    "transposed",
]
