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
