"""Pictures written next to the JSON outputs (matplotlib, no display needed)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402


def affinity_heatmap(record: dict, path: str) -> None:
  """Heat map of record['matrix'] (rows = sources, columns = targets) with task names."""
  matrix, tasks = np.asarray(record["matrix"]), record["tasks"]
  size = 2.0 + 0.45 * len(tasks)
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  limit = np.abs(matrix).max() or 1.0
  image = ax.imshow(matrix, cmap="RdBu", vmin=-limit, vmax=limit)
  ax.set_xticks(range(len(tasks)), tasks, rotation=90)
  ax.set_yticks(range(len(tasks)), tasks)
  ax.set_xlabel("target task")
  ax.set_ylabel("source task (lookahead on it)" if record["method"] == "tag" else "task")
  ax.set_title(f"{record['method'].upper()} affinity (mean of {record['steps_recorded']} steps)")
  fig.colorbar(image, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def affinity_over_time(record: dict, path: str) -> None:
  """One panel per target task: the affinity onto it from every other task, per epoch."""
  tasks = record["tasks"]
  epochs = [(e + 1, np.asarray(m)) for e, m in enumerate(record["per_epoch"]) if m is not None]
  cols = min(len(tasks), 5)
  rows = -(-len(tasks) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False,
                           sharex=True)
  x = [e for e, _ in epochs]
  for t, target in enumerate(tasks):
    ax = axes.flat[t]
    for u, source in enumerate(tasks):
      if u != t:
        ax.plot(x, [m[u, t] for _, m in epochs], label=source)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_title(f"onto {target}", fontsize=9)
  for ax in axes.flat[len(tasks):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=6, ncol=2)
  fig.supxlabel("epoch")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def assignment_probabilities(record: dict, path: str) -> None:
  """DMTG: one panel per task, the probability softmax(Θ[n]) of each group over the epochs.

  record: groups.json ('tasks', 'probabilities' (N, K), 'probabilities_per_epoch' (E, N, K));
  a panel's title names the task and the group it ends in.
  """
  tasks = record["tasks"]
  per_epoch = np.asarray(record["probabilities_per_epoch"] or [record["probabilities"]])
  final = np.asarray(record["probabilities"]).argmax(-1)
  cols = min(len(tasks), 5)
  rows = -(-len(tasks) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False,
                           sharex=True, sharey=True)
  epochs = np.arange(1, len(per_epoch) + 1)
  for n, task in enumerate(tasks):
    ax = axes.flat[n]
    for k in range(per_epoch.shape[-1]):
      ax.plot(epochs, per_epoch[:, n, k], marker=".", label=f"group {k}")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(f"{task} -> group {final[n]}", fontsize=9)
  for ax in axes.flat[len(tasks):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=6)
  fig.supxlabel("epoch")
  fig.supylabel("assignment probability softmax(Θ)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def groupings(record: dict, path: str) -> None:
  """One row per selection (k): which tasks each chosen group contains (filled) and serves (dot)."""
  tasks, selections = record["tasks"], record["selections"]
  rows = [(s["max_groups"], g, s["assignment"]) for s in selections for g in s["groups"]]
  fig, ax = plt.subplots(figsize=(1.5 + 0.4 * len(tasks), 0.8 + 0.35 * len(rows)))
  for r, (_, group, assignment) in enumerate(rows):
    for t, task in enumerate(tasks):
      if task in group:
        ax.add_patch(plt.Rectangle((t - 0.45, r - 0.4), 0.9, 0.8, color=f"C{r % 10}", alpha=0.35))
        if assignment.get(task) == list(group):
          ax.plot(t, r, "o", color=f"C{r % 10}")
  ax.set_xlim(-0.5, len(tasks) - 0.5)
  ax.set_ylim(len(rows) - 0.5, -0.5)
  ax.set_xticks(range(len(tasks)), tasks, rotation=90)
  ax.set_yticks(range(len(rows)), [f"k={k}: group {i + 1}" for i, (k, _, _) in enumerate(rows)])
  ax.set_title(f"{record['method'].upper()} groups (shaded: member; dot: served by this group)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def total_error_vs_compute(rows: list, path: str) -> None:
  """The grouping study: test Total Error of every report row against its trunk passes and seconds.

  rows: report.json rows ('label', 'k', 'test_total_error', 'trunk_passes', 'seconds').
  """
  labels = sorted({r["label"] for r in rows})
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
  for ax, key, name in ((axes[0], "trunk_passes", "trunk passes"),
                        (axes[1], "seconds", "training seconds")):
    for i, label in enumerate(labels):
      mine = [r for r in rows if r["label"] == label]
      ax.scatter([r[key] for r in mine], [r["test_total_error"] for r in mine], color=f"C{i % 10}",
                 marker="osD^v<>pX*h"[i % 11], label=label)
      for r in mine:
        ax.annotate(f"k={r['k']}", (r[key], r["test_total_error"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"{name} (log scale)")
  axes[0].set_ylabel("Total Error, test (sum of task error %)")
  axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.suptitle("Total Error against compute (lower left is better)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
