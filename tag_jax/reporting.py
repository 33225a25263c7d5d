"""Atomic JSON outputs and metrics.jsonl upkeep (light: no TensorFlow, no clu)."""

import json
import os
import tempfile

import jax
import numpy as np


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to a temporary file in the same folder, then renames it: never half-written."""
  folder = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
    json.dump(obj, f, indent=1, default=_to_builtin)
  os.replace(f.name, path)


def _to_builtin(value):
  if isinstance(value, (np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drops records logged after `last_step` (they are re-logged when a resumed run redoes them)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
  with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False) as f:
    f.writelines(kept)
  os.replace(f.name, path)


def answer_lines(results: dict, workdir: str) -> list[str]:
  """What a run found, for the console: test Total Error, the groups that served the tasks, each
  selection (k, groups, score, proof gap) the method made, and the files written."""
  lines = ["", f"{results['method']}: test Total Error {results['test']['total_error']:.2f} "
           f"(sum over {len(results['tasks'])} tasks of error %), best epoch "
           f"{results['best_epoch']} of {results['epochs']}"]
  if len(results["groups"]) > 1:
    lines.append("served by: " + " ".join("{" + ", ".join(g) + "}" for g in results["groups"]))
  selections = results.get("outputs", {}).get("selections", [])
  if selections:
    lines.append(f"{'k':>3}  {'score':>10}  {'gap':>6}  groups")
    for s in selections:
      score = "-" if s["score"] is None else f"{s['score']:.4g}"
      gap = "-" if s["gap"] is None else f"{s['gap']:.3g}"
      lines.append(f"{s['max_groups']:>3}  {score:>10}  {gap:>6}  "
                   + " ".join("{" + ", ".join(g) + "}" for g in s["groups"]))
  files = sorted(name for name in os.listdir(workdir) if name.endswith((".json", ".png")))
  lines.append(f"files in {workdir}: {', '.join(files)}")
  return lines
