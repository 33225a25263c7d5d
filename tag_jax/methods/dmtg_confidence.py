"""How sure is DMTG's grouping? Groupings drawn from its assignment over the search
(docs/dmtg_confidence.md).

DMTG's grouping is the argmax of Θ (N, K). A draw picks one epoch end e of the search and lets
every task n draw its group from softmax(Θ_e[n]), independently of the other tasks: the argmax
of a Gumbel-softmax sample softmax((Θ_e + g) / τ) (at any τ: the argmax of Θ_e + g, the
Gumbel-max trick). `num_samples` draws are spread evenly over the epoch ends of the window: the
epoch ends where Θ had learned (after `config.dmtg.warmup_steps`, before the fine-tuning
epochs), up to the reported one, the last `epochs` of them (0: all). Each draw's tasks grouped
by group drawn (empty groups dropped) give a grouping; `confidence` is the share of draws equal
to the reported grouping (selection.confidence.grouping_confidence: also the alternatives drawn
and the co-membership), the verdict is selection.confidence.verdict's.

So the confidence is the chance that the assignment, looked at at an epoch end of the search
drawn at random, holds the reported grouping: high when Θ chose it early and kept it sharply,
low when Θ reached it late or held it loosely. Within one run nothing tells a confidently wrong
assignment from a right one; what this measures is how settled the choice was over the search
(docs/dmtg_confidence.md: why the whole search, and the recovery measured against it).
"""

import ml_collections
import numpy as np

from selection import confidence


def confidence_config() -> ml_collections.ConfigDict:
    """config.dmtg.confidence: the groupings drawn from the assignment behind the confidence."""
    cfg = ml_collections.ConfigDict()
    cfg.num_samples = 1000  # groupings drawn from Θ (0 = no confidence)
    cfg.epochs = 0  # from Θ at the last this many epoch ends of the search; 0 = all of them
    cfg.seed = 0  # the draws; results are deterministic for a seed
    return cfg


def groups_from_labels(task_names, labels) -> list:
    """Tasks grouped by label (N,): groups in order of their first task, empty ones dropped."""
    labels = [int(label) for label in labels]
    return [
        [name for name, label in zip(task_names, labels) if label == k]
        for k in dict.fromkeys(labels)
    ]


def search_window(
    num_recorded: int, reported_epoch: int, learned_from: int, learned_to: int, epochs: int
) -> range:
    """0-based indices of the recorded epoch ends (1-based epochs 1..num_recorded) the draws use:
    those of epochs learned_from..learned_to (where Θ had learned) up to the reported epoch, the
    last `epochs` of them (0: all). Empty when none."""
    end = min(reported_epoch, learned_to, num_recorded)
    start = max(learned_from, 1, end - epochs + 1 if epochs else 1)
    return range(start - 1, end)


def assignment_labels(probabilities, num_samples: int, seed: int) -> np.ndarray:
    """(num_samples, N) group of every task in each draw: draw s uses probabilities[s mod E]
    ((E, N, K): softmax(Θ) at E epoch ends) and every task draws its group, P(k) = p[n, k], as
    the argmax of log p + Gumbel noise from np.random.default_rng(seed)."""
    with np.errstate(divide="ignore"):
        log_p = np.log(np.asarray(probabilities, np.float64))
    rng = np.random.default_rng(seed)
    noise = rng.gumbel(size=(num_samples,) + log_p.shape[1:])
    return np.argmax(log_p[np.arange(num_samples) % len(log_p)] + noise, axis=-1)


def assignment_confidence(task_names, reported, probabilities, config) -> dict:
    """grouping_confidence's fields and the 'verdict' of the reported grouping against
    config.num_samples groupings drawn from probabilities (E, N, K): softmax(Θ) at the window's
    epoch ends."""
    labels = assignment_labels(probabilities, config.num_samples, config.seed)
    sampled = [groups_from_labels(task_names, row) for row in labels]
    summary = confidence.grouping_confidence(reported, sampled, list(task_names))
    return {**summary, "verdict": confidence.verdict(summary["confidence"])}
