"""Pictures written next to the JSON outputs (matplotlib, no display needed).

Each function takes a record (the JSON it pictures) and returns the Figure;
`save` writes and closes it. Colours follow a fixed item (a source task, a
group), never the drawing order, and every figure has one legend that names
every series it draws.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402


def save(fig, path: str, dpi: int = 100) -> None:
    """Writes the figure (its whole drawn extent, so no title or legend is cut) and closes it."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def colour(index: int, count: int):
    """A fixed colour for item `index` of `count` (tab10 up to 10 items, tab20, then a colormap)."""
    if count <= 10:
        return plt.get_cmap("tab10")(index)
    if count <= 20:
        return plt.get_cmap("tab20")(index)
    return plt.get_cmap("turbo")(index / max(count - 1, 1))


def panel_grid(count: int, **kwargs):
    """(fig, axes) with one panel for each of `count` items, up to 5 a row; spare panels hidden."""
    cols = min(count, 5)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, **kwargs)
    for ax in axes.flat[count:]:
        ax.axis("off")
    for ax in axes.flat[:count]:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs, groups
    return fig, axes


def matrix_image(matrix, cell: int = 16) -> np.ndarray:
    """A (S, T) matrix as an RGB uint8 image (S * cell, T * cell, 3), RdBu around 0
    (TensorBoard)."""
    matrix = np.asarray(matrix, np.float64)
    limit = np.abs(matrix).max() or 1.0
    rgb = plt.get_cmap("RdBu")((matrix / limit + 1.0) / 2.0)[..., :3]
    return (255 * np.kron(rgb, np.ones((cell, cell, 1)))).astype(np.uint8)


def affinity_heatmap(record: dict):
    """Heat map of record['matrix'] (rows = sources, columns = targets) with task names.

    The colour scale is the off-diagonal entries' own (symmetric around 0): they decide the
    groups, and a task's affinity onto itself is often many times larger. The diagonal is grey
    with each value written in its cell.
    """
    matrix, tasks = np.asarray(record["matrix"], np.float64), record["tasks"]
    on_diagonal = np.eye(len(tasks), dtype=bool)
    off_diagonal = np.abs(matrix[~on_diagonal])
    limit = (off_diagonal.max() if off_diagonal.size else 0.0) or 1.0
    size = 2.0 + 0.45 * len(tasks)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(
        np.ma.masked_where(on_diagonal, matrix),
        cmap=plt.get_cmap("RdBu").with_extremes(bad="lightgrey"),
        vmin=-limit,
        vmax=limit,
    )
    for t in range(len(tasks)):
        ax.text(t, t, f"{matrix[t, t]:.2g}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(tasks)), tasks, rotation=90)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("target task")
    ax.set_ylabel("source task (lookahead on it)" if record["method"] == "tag" else "task")
    ax.set_title(f"{record['method'].upper()} affinity\n(mean of {record['steps_recorded']} steps)")
    fig.colorbar(image, ax=ax, label="off-diagonal affinity (diagonal: grey, value written)")
    fig.tight_layout()
    return fig


def affinity_over_time(record: dict):
    """One panel per target task: the affinity onto it from every other task, per epoch.

    Source task u has the same colour in every panel; one legend names every source.
    """
    tasks = record["tasks"]
    epochs = [(e + 1, np.asarray(m)) for e, m in enumerate(record["per_epoch"]) if m is not None]
    fig, axes = panel_grid(len(tasks), sharex=True)
    x = [e for e, _ in epochs]
    for t, target in enumerate(tasks):
        ax = axes.flat[t]
        for u, source in enumerate(tasks):
            if u != t:
                ax.plot(
                    x,
                    [m[u, t] for _, m in epochs],
                    marker="." if len(x) < 3 else None,
                    color=colour(u, len(tasks)),
                    label=source,
                )
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(f"onto {target}", fontsize=9)
    handles = [
        plt.Line2D([], [], color=colour(u, len(tasks)), label=source)
        for u, source in enumerate(tasks)
    ]
    fig.legend(
        handles=handles,
        title="from source task",
        fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
    )
    fig.supxlabel("epoch")
    fig.suptitle(f"{record['method'].upper()} affinity onto each task, per epoch")
    fig.tight_layout()
    return fig


def assignment_probabilities(record: dict):
    """DMTG: one panel per task, the probability softmax(Θ[n]) of each group over the epochs
    (bars when only one epoch was recorded).

    record: groups.json ('tasks', 'probabilities' (N, K), 'probabilities_per_epoch' (E, N, K));
    a panel's title names the task and the group it ends in; group k has one colour everywhere.
    """
    tasks = record["tasks"]
    per_epoch = np.asarray(record["probabilities_per_epoch"] or [record["probabilities"]])
    num_groups = per_epoch.shape[-1]
    final = np.asarray(record["probabilities"]).argmax(-1)
    fig, axes = panel_grid(len(tasks), sharey=True)
    epochs = np.arange(1, len(per_epoch) + 1)
    for n, task in enumerate(tasks):
        ax = axes.flat[n]
        if len(per_epoch) == 1:
            ax.bar(
                range(num_groups),
                per_epoch[0, n],
                color=[colour(k, num_groups) for k in range(num_groups)],
            )
            ax.set_xticks(range(num_groups), [f"{k}" for k in range(num_groups)])
        else:
            for k in range(num_groups):
                ax.plot(epochs, per_epoch[:, n, k], marker=".", color=colour(k, num_groups))
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{task} -> group {final[n]}", fontsize=9)
    handles = [
        plt.Line2D([], [], color=colour(k, num_groups), label=f"group {k}")
        for k in range(num_groups)
    ]
    fig.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.supxlabel("group" if len(per_epoch) == 1 else "epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("probability")
    fig.suptitle("DMTG assignment probabilities softmax(Θ) of each task")
    fig.tight_layout()
    return fig


def groupings(record: dict):
    """One row per chosen group, numbered from 1 within each k: which tasks it contains (shaded)
    and serves (dot)."""
    tasks, selections = record["tasks"], record["selections"]
    rows = [
        (s["max_groups"], i + 1, g, s["assignment"])
        for s in selections
        for i, g in enumerate(s["groups"])
    ]
    # wide enough for the two-line title above the task columns
    fig, ax = plt.subplots(figsize=(max(2.5 + 0.4 * len(tasks), 6.5), 1.2 + 0.35 * len(rows)))
    for r, (_, number, group, assignment) in enumerate(rows):
        tint = f"C{(number - 1) % 10}"
        for t, task in enumerate(tasks):
            if task in group:
                ax.add_patch(plt.Rectangle((t - 0.45, r - 0.4), 0.9, 0.8, color=tint, alpha=0.35))
                if assignment.get(task) == list(group):
                    ax.plot(t, r, "o", color=tint)
    for r in range(1, len(rows)):
        if rows[r][0] != rows[r - 1][0]:
            ax.axhline(r - 0.5, color="black", linewidth=0.8)
    ax.set_xlim(-0.5, len(tasks) - 0.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xticks(range(len(tasks)), tasks, rotation=90)
    ax.set_yticks(range(len(rows)), [f"k={k}: group {number}" for k, number, _, _ in rows])
    ax.set_title(
        f"{record['method'].upper()} groups\n(shaded: member; dot: served by this group)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def serving_groups(selection: dict) -> dict:
    """task -> the group serving it: the selection's 'assignment', else the first group holding
    the task."""
    if "assignment" in selection:
        return {t: list(g) for t, g in selection["assignment"].items()}
    return {t: list(g) for g in reversed(selection["groups"]) for t in g}


def grouping_confidence(record: dict):
    """One panel per k: the co-membership share (how often two tasks share a group over the
    resamples, or DMTG's draws of its assignment) with the tasks ordered by the group serving
    them, each reported group's served tasks outlined; the title gives the confidence and
    verdict. record: groups.json."""
    tasks, selections = record["tasks"], record["selections"]
    size = 1.5 + 0.32 * len(tasks)
    fig, axes = plt.subplots(
        1,
        len(selections),
        figsize=(size * len(selections) + 1.2, size + 0.6),
        squeeze=False,
        layout="constrained",  # room for the two-line titles and the colour bar
    )
    for ax, s in zip(axes.flat, selections):
        serving = serving_groups(s)
        served = [
            [t for t, task in enumerate(tasks) if serving[task] == list(g)] for g in s["groups"]
        ]
        order = [t for members in served for t in members]  # each served set contiguous
        share = np.asarray(s["co_membership"])[np.ix_(order, order)]
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        start = 0
        for members in served:
            ax.add_patch(
                plt.Rectangle(
                    (start - 0.5, start - 0.5),
                    len(members),
                    len(members),
                    fill=False,
                    color="C3",
                    linewidth=2,
                )
            )
            start += len(members)
        names = [tasks[t] for t in order]
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(
            f"k={s['max_groups']}: confidence {s['confidence']:.2f}\n{s['verdict']}", fontsize=9
        )
    samples = "draws" if record["method"] == "dmtg" else "resamples"
    fig.colorbar(image, ax=list(axes.flat), label=f"share of {samples} in one group", shrink=0.8)
    fig.suptitle(
        f"{record['method'].upper()}: how often two tasks share a group over "
        f"{selections[0]['num_samples']} {samples}\n"
        f"{'of the assignment ' if samples == 'draws' else ''}(outlined: the reported groups)",
        fontsize=10,
    )
    return fig


# One colour per study label (the study has 11: tab10's ten, then black).
STUDY_COLORS = tuple(f"C{i}" for i in range(10)) + ("black",)


def total_error_vs_compute(rows: list):
    """The grouping study: test Total Error of every report row against its trunk passes and
    seconds.

    rows: report.json rows ('label', 'k', 'test_total_error', 'trunk_passes', 'seconds', and with
    several seeds 'test_total_error_stats' {'std', 'values'}): the mean with a bar of one standard
    deviation, and each seed's value as a small dot.
    """
    labels = sorted({r["label"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, key, name in (
        (axes[0], "trunk_passes", "trunk passes"),
        (axes[1], "seconds", "training seconds"),
    ):
        for i, label in enumerate(labels):
            mine = [r for r in rows if r["label"] == label]
            color, marker = STUDY_COLORS[i % len(STUDY_COLORS)], "osD^v<>pX*h"[i % 11]
            spread = [(r.get("test_total_error_stats") or {}).get("std") or 0.0 for r in mine]
            ax.errorbar(
                [r[key] for r in mine],
                [r["test_total_error"] for r in mine],
                yerr=spread,
                color=color,
                marker=marker,
                linestyle="none",
                capsize=3,
                label=label,
            )
            for r in mine:
                seeds = (r.get("test_total_error_stats") or {}).get("values") or []
                if len(seeds) > 1:
                    ax.scatter([r[key]] * len(seeds), seeds, color=color, s=6, alpha=0.5)
                ax.annotate(
                    f"k={r['k']}",
                    (r[key], r["test_total_error"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"{name} (log scale)")
    axes[0].set_ylabel("Total Error, test (sum of task error %)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    seeds = max(len((r.get("test_total_error_stats") or {}).get("values") or [0]) for r in rows)
    fig.suptitle(
        "Total Error against compute (lower left is better)"
        + (f"; mean ± std over {seeds} seeds, dots: each seed" if seeds > 1 else "")
    )
    fig.tight_layout()
    return fig
