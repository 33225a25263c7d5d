"""TAG's affinity estimators against the exact lookahead: step cost and fidelity (one run).

  python benchmarks/affinity_estimators.py --tasks 9 40 100 --workdir runs/estimators

Presets with planted groups on the synthetic data: T = 9 configs/synthetic_tag.py (3 groups of
3), 40 configs/synthetic_many_tasks_40.py (4 of 10), 100 configs/synthetic_many_tasks.py (10 of
10). For each T:
- cost: median step time of the plain MTL step, the CS step and each estimator's measured step,
  built as the training loop builds them on the preset's shapes; ratios over the plain step of
  the same run (and first_order over CS), and the amortised cost when every
  affinity.every_n_steps-th step is measured.
- fidelity: one TAG run per estimator (same seed and data); Spearman rank correlation of its
  affinity matrix with exact's (off-diagonal entries: selection never reads the diagonal); the
  groups selected for k = the number of planted groups, whether they are exact's and the planted
  ones; and their test Total Error after training them with method 'groups' (each distinct
  grouping trained once: the same groups give the same networks).
Finished runs under --workdir are reused. Prints markdown tables, then one JSON line.
Estimators are named 'exact', 'first_order' and 'sketched:<m>' (m = affinity.sketch_size).
"""

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402
from affinity_step import random_batch, time_step  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from tag_jax import methods, train  # noqa: E402
from tag_jax.data import synthetic  # noqa: E402

PRESETS = {9: "synthetic_tag", 40: "synthetic_many_tasks_40", 100: "synthetic_many_tasks"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", type=int, nargs="+", default=[9, 40, 100], choices=sorted(PRESETS)
    )
    parser.add_argument("--estimators", nargs="+", default=["exact", "first_order", "sketched:32"])
    parser.add_argument(
        "--cost_estimators",
        nargs="+",
        default=["exact", "first_order", "sketched:32", "sketched:8"],
    )
    parser.add_argument(
        "--parts", nargs="+", default=["cost", "fidelity"], choices=["cost", "fidelity"]
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", default="runs/affinity_estimators")
    return parser.parse_args(argv)


def preset(num_tasks):
    """get_config() of the preset for num_tasks."""
    name = PRESETS[num_tasks]
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.mesh.data = 1
    return config


def with_estimator(config, estimator):
    """A copy of config running TAG with 'exact' | 'first_order' | 'sketched:<m>'."""
    config = config.copy_and_resolve_references()
    config.method = "tag"
    name, _, size = estimator.partition(":")
    config.affinity.estimator = name
    if size:
        config.affinity.sketch_size = int(size)
    return config


def step_costs(num_tasks, estimators, repeats):
    """{name: median seconds} of the plain step, the CS step and each estimator's measured step."""
    base = preset(num_tasks)
    size = base.image_size
    batch = random_batch(num_tasks, size, base.batch_size)
    names = [f"t{i}" for i in range(num_tasks)]
    variants = {"plain": ("mtl", None), "cs": ("cs", None)}
    variants.update({e: ("tag", e) for e in estimators})
    seconds = {}
    for label, (method, estimator) in variants.items():
        config = (
            with_estimator(base, estimator) if estimator else base.copy_and_resolve_references()
        )
        config.method = method
        methods.validate(config)
        method_obj = methods.build(config, names, (size, size, 3), steps_per_epoch=100)
        state = jax.jit(method_obj.init_state)(jax.random.key(0))
        step = method_obj.measured_step or method_obj.train_step
        seconds[label] = time_step(step, state, batch, repeats, method_obj.compiler_options)[1]
    return seconds, base.affinity.every_n_steps


def run_once(config, workdir):
    """results.json of a finished run in workdir (trained now if missing)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        train.train_and_evaluate(config, workdir)
    return json.load(open(path))


def grouping_key(selection):
    """The selection's groups and serving assignment, order-free."""
    groups = sorted(tuple(sorted(g)) for g in selection["groups"])
    serving = sorted((t, tuple(sorted(g))) for t, g in selection["assignment"].items())
    return json.dumps([groups, serving])


def off_diagonal(matrix):
    matrix = np.asarray(matrix)
    return matrix[~np.eye(len(matrix), dtype=bool)]


def fidelity(num_tasks, estimators, workdir):
    """{estimator: {spearman, groups, same_as_exact, planted, total_error, seconds}}."""
    base = preset(num_tasks)
    planted = sorted(tuple(g) for g in synthetic.planted_groups(tuple(base.dataset.group_sizes)))
    k = len(planted)
    base.selection.max_groups = (k,)
    out, trained = {}, {}
    for estimator in ["exact"] + [e for e in estimators if e != "exact"]:
        run_dir = os.path.join(workdir, f"T{num_tasks}", estimator.replace(":", "_"))
        results = run_once(with_estimator(base, estimator), run_dir)
        matrix = json.load(open(os.path.join(run_dir, "affinity.json")))["matrix"]
        selection = json.load(open(os.path.join(run_dir, "groups.json")))["selections"][0]
        key = grouping_key(selection)
        if key not in trained:
            groups_config = base.copy_and_resolve_references()
            groups_config.method = "groups"
            groups_config.groups.groups_file = os.path.join(run_dir, "groups.json")
            groups_dir = os.path.join(
                workdir, f"T{num_tasks}", f"groups_of_{estimator.replace(':', '_')}"
            )
            trained[key] = run_once(groups_config, groups_dir)["test"]["total_error"]
        exact = out.get("exact")
        out[estimator] = {
            "spearman": 1.0
            if exact is None
            else float(spearmanr(off_diagonal(exact["matrix"]), off_diagonal(matrix))[0]),
            "groups": selection["groups"],
            "gap": selection["gap"],
            "same_as_exact": exact is None or key == exact["key"],
            "planted": sorted(tuple(sorted(g)) for g in selection["groups"]) == planted,
            "total_error": trained[key],
            "tag_total_error": results["test"]["total_error"],
            "tag_train_seconds": round(results["compute"]["train_seconds"], 1),
            "matrix": matrix,
            "key": key,
        }
    for record in out.values():
        del record["matrix"], record["key"]
    return out


def main(argv=None):
    args = parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    load = os.getloadavg()
    report = {
        "benchmark": "affinity_estimators",
        "backend": jax.default_backend(),
        "load_average_1_5_15": [round(x, 2) for x in load],
        "results": [],
    }
    print(
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, backend {jax.default_backend()}"
    )
    for num_tasks in args.tasks:
        entry = {"tasks": num_tasks, "preset": PRESETS[num_tasks]}
        if "cost" in args.parts:
            seconds, every = step_costs(num_tasks, args.cost_estimators, args.repeats)
            plain = seconds["plain"]
            entry["step_ms"] = {k: round(1e3 * v, 2) for k, v in seconds.items()}
            entry["over_plain"] = {k: round(v / plain, 2) for k, v in seconds.items()}
            entry[f"every_{every}_steps"] = {
                k: round(((every - 1) * plain + v) / (every * plain), 2) for k, v in seconds.items()
            }
            if "first_order" in seconds:
                entry["first_order_over_cs"] = round(seconds["first_order"] / seconds["cs"], 2)
            print(
                f"\nT = {num_tasks}: step cost (plain {1e3 * plain:.1f} ms, "
                f"median of {args.repeats})"
            )
            print(f"| step | ms | over plain | every {every} steps |\n|---|---:|---:|---:|")
            for k, v in seconds.items():
                print(
                    f"| {k} | {1e3 * v:.1f} | {v / plain:.2f}x | "
                    f"{entry[f'every_{every}_steps'][k]:.2f}x |",
                    flush=True,
                )
        if "fidelity" in args.parts:
            entry["fidelity"] = fidelity(num_tasks, args.estimators, args.workdir)
            print(f"\nT = {num_tasks}: fidelity to exact")
            print("| estimator | Spearman | same groups as exact | planted | gap | Total Error |")
            print("|---|---:|---|---|---:|---:|")
            for k, v in entry["fidelity"].items():
                print(
                    f"| {k} | {v['spearman']:.3f} | {v['same_as_exact']} | {v['planted']} | "
                    f"{v['gap']:.2g} | {v['total_error']:.2f} |",
                    flush=True,
                )
        report["results"].append(entry)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
