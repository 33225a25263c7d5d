"""How often DMTG recovers the planted groups, over seeds, faithful against robust settings, and
how sure each run says it is.

  python benchmarks/dmtg_recovery.py [--seeds 10] [--first_seed 0]
      [--presets three_groups two_groups] [--variants faithful robust] [--step_repeats 40]

For each preset (planted groups of the synthetic data) and variant (config changes), trains
DMTG with config.seed = first_seed .. first_seed + seeds - 1 and prints, per seed, whether the
argmax Θ read-out recovered the planted groups, the run's confidence in its grouping and its
verdict (groups.json; docs/dmtg_confidence.md). Then, per preset and variant: how many seeds
recover the planted groups, how many of the misses still say "clear" and the highest
confidence of a miss, the step after which the argmax no longer changes (median), the
one-shot test Total Error (median), the median seconds per training step of the runs (the
loop's, with its logging and evaluation), and the bare jitted train step's time over the
faithful one's (both compiled in this process and timed in turn, median of `--step_repeats`
rounds; 0 skips it). Prints a table and, last, one JSON line.
"""

import argparse
import importlib.util
import json
import os
import statistics
import tempfile

from dmtg_step import compiled_step, median_step_ms

from tag_jax import step_timing, train
from tag_jax.data import synthetic
from tag_jax.study import plan as study_plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
    path = os.path.join(REPO, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def three_groups():
    """The synthetic study's DMTG search (stage dmtg_k3): 9 tasks in 3 planted groups, width 16,
    K = 3, DMTG's own Adam."""
    stage = study_plan.Stage(
        "dmtg_k3", {"method": "dmtg", "dmtg.num_groups": 3}, search=True, method="dmtg"
    )
    return study_plan.stage_config(load_config("synthetic_study"), stage)


def two_groups():
    """configs/synthetic_dmtg.py: 6 tasks in 2 planted groups, 2-filter trunks, K = 2."""
    return load_config("synthetic_dmtg")


PRESETS = {"three_groups": three_groups, "two_groups": two_groups}


def robust_changes() -> dict:
    """The config.dmtg values configs/synthetic_dmtg_robust.py changes over synthetic_dmtg.py
    (only those: its num_groups, K = 2, must not replace a preset's)."""
    robust = load_config("synthetic_dmtg_robust").dmtg.to_dict()
    faithful = load_config("synthetic_dmtg").dmtg.to_dict()
    return {key: value for key, value in robust.items() if faithful[key] != value}


# Variant -> config.dmtg changes over the preset.
VARIANTS = {"faithful": {}, "robust": robust_changes()}


def stable_step(workdir: str, task_names) -> int:
    """The first logged step from which argmax Θ (metrics group_of_task) never changes again."""
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rows = [
        (r["step"], tuple(r[f"train/group_of_task/{t}"] for t in task_names))
        for r in records
        if f"train/group_of_task/{task_names[0]}" in r
    ]
    final = rows[-1][1]
    step = rows[-1][0]
    for s, assignment in reversed(rows):
        if assignment != final:
            break
        step = s
    return step


def run(preset: str, variant: str, seed: int, folder: str) -> dict:
    config = PRESETS[preset]()
    config.seed = seed
    config.log_every_steps = 1
    config.dmtg.update(VARIANTS[variant])
    workdir = os.path.join(folder, f"{preset}_{variant}_{seed}")
    results = train.train_and_evaluate(config, workdir)
    planted = {frozenset(g) for g in synthetic.planted_groups(tuple(config.dataset.group_sizes))}
    (selection,) = json.load(open(os.path.join(workdir, "groups.json")))["selections"]
    return {
        "seed": seed,
        "recovered": {frozenset(g) for g in selection["groups"]} == planted,
        "confidence": selection.get("confidence"),
        "verdict": selection.get("verdict"),
        "stable_step": stable_step(workdir, results["tasks"]),
        "steps": results["steps"],
        "total_error": results["test"]["total_error"],
        "seconds_per_step": results["compute"]["train_seconds"] / results["steps"],
        "groups": selection["groups"],
    }


def seed_line(preset: str, variant: str, r: dict) -> str:
    """One seed's outcome: recovered or missed, the run's confidence and verdict, its groups."""
    outcome = "recovered" if r["recovered"] else "MISSED"
    confidence = "-" if r["confidence"] is None else f"{r['confidence']:.3f}"
    groups = " ".join("{" + ", ".join(g) + "}" for g in r["groups"])
    return (
        f"{preset} {variant} seed {r['seed']}: {outcome}, confidence {confidence}, "
        f"verdict {r['verdict']}: {groups}"
    )


def summarise(runs: list, ratio) -> dict:
    misses = [r for r in runs if not r["recovered"]]
    return {
        "recovered": len(runs) - len(misses),
        "seeds": [r["seed"] for r in runs],
        "misses_clear": sum(r["verdict"] == "clear" for r in misses),
        "max_miss_confidence": max((r["confidence"] or 0.0 for r in misses), default=None),
        "confidence": {r["seed"]: r["confidence"] for r in runs},
        "verdict": {r["seed"]: r["verdict"] for r in runs},
        "median_stable_step": statistics.median(r["stable_step"] for r in runs),
        "steps": runs[0]["steps"],
        "median_total_error": statistics.median(r["total_error"] for r in runs),
        "median_seconds_per_step": statistics.median(r["seconds_per_step"] for r in runs),
        "step_over_faithful": ratio,
    }


def step_ratios(preset: str, variants, repeats: int) -> dict:
    """variant -> its bare train step's median time over the faithful step's, on the preset's
    shapes (random batch; every variant compiled here and timed in turn)."""
    config = PRESETS[preset]()
    batch = step_timing.random_batch(
        config.batch_size,
        (config.image_size, config.image_size, 3),
        sum(config.dataset.group_sizes),
        config.model.num_classes,
    )
    steps = {}
    for variant in dict.fromkeys(("faithful",) + tuple(variants)):
        variant_config = PRESETS[preset]()
        variant_config.dmtg.update(VARIANTS[variant])
        steps[variant] = compiled_step(variant_config, batch)
    ms = median_step_ms(steps, batch, repeats)
    return {variant: ms[variant] / ms["faithful"] for variant in variants}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--step_repeats", type=int, default=40)
    args = parser.parse_args(argv)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    summary = {}
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            ratios = (
                step_ratios(preset, args.variants, args.step_repeats)
                if args.step_repeats
                else dict.fromkeys(args.variants)
            )
            for variant in args.variants:
                runs = []
                for seed in seeds:
                    runs.append(run(preset, variant, seed, folder))
                    print(seed_line(preset, variant, runs[-1]), flush=True)
                summary[f"{preset}/{variant}"] = summarise(runs, ratios[variant])
                print(f"{preset} {variant}: {summary[f'{preset}/{variant}']}", flush=True)
    print(
        "| preset | variant | recovered | misses with verdict clear | highest confidence of a "
        "miss | argmax stable from step (median) | steps | Total Error (median) | "
        "s/step (median) | step / faithful step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        preset, variant = name.split("/")
        ratio = "-" if s["step_over_faithful"] is None else f"{s['step_over_faithful']:.2f}"
        highest = "-" if s["max_miss_confidence"] is None else f"{s['max_miss_confidence']:.3f}"
        print(
            f"| {preset} | {variant} | {s['recovered']}/{len(s['seeds'])} | "
            f"{s['misses_clear']}/{len(s['seeds']) - s['recovered']} | {highest} | "
            f"{s['median_stable_step']} | {s['steps']} | {s['median_total_error']:.2f} | "
            f"{s['median_seconds_per_step']:.4f} | {ratio} |"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
