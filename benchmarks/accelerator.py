"""One command for an accelerator: step times, the loop's steps/s, the pipeline, auto's choices.

  python benchmarks/accelerator.py [--budget_s 270] [--quick]

Prints one JSON object (and progress on stderr):
- `steps`: for 9 and 40 tasks at 64x64, batch 256, width 64 (the published CelebA setting),
  the median step time (ms) of plain MTL, TAG's and CS's measured steps with every affinity
  strategy worth timing (stacking.timing_candidates: 'unrolled' up to 16 slices, 'map' beyond), DMTG
  (K = 3) with every branch strategy, and each one's ratio to the plain step; `conv`: the plain
  step with XLA's convolution and with im2col. Candidates whose compiled step does not fit in
  device memory are null.
- `loop`: benchmarks/loop_overhead.py at the same shapes: the training loop's time per step
  and the bare jitted step's (plain MTL, synthetic data), and their ratio; with the default
  config.prefetch_batches and with none.
- `pipeline`: CelebA examples/s from the uint8 cache and from the source (mock data: no JPEG
  decoding), benchmarks/input_pipeline.py.
- `autotune`: benchmarks/autotune_check.py's ratios (auto's choice / the fastest explicit
  choice) for 9 tasks.
Sections are run in the order: steps for the first task count, loop, pipeline, autotune, steps
for the other task counts; sections and steps within them, until --budget_s is spent; the rest are
listed in `skipped`. A section that fails is recorded with its error and the next one runs.
--out FILE: the JSON object is also written there after every step row and section (complete so
far, replaced atomically), so a run stopped from outside still leaves its numbers.
--quick: 16x16, width 8, batch 8, 3 and 5 tasks, short repeats (checks that it runs, on CPU).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import autotune_check  # benchmarks/ is the script's folder
import input_pipeline
import jax

from tag_jax import autotune, methods, stacking, step_timing
from tag_jax.default_config import get_base_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--tasks", type=int, nargs="+", default=[9, 40])
    parser.add_argument("--groups", type=int, default=3, help="DMTG branches K")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--loop_rounds", type=int, default=3)
    parser.add_argument(
        "--budget_s", type=float, default=270.0, help="start no new section after this many seconds"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="", help="also write the JSON here as it grows")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.width, args.batch_size, args.tasks = 16, 8, 8, [3, 5]
        args.repeats, args.loop_rounds = 3, 2
    args.checks = ["conv", "tag", "dmtg"]  # for autotune_check.run_checks
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median_ms(config, num_tasks: int, kind: str, repeats: int):
    """(median ms of `repeats` steps after a warm-up, compile s) of the method's `kind` step;
    (None, None) when it does not fit in memory."""
    names = [f"t{i}" for i in range(num_tasks)]
    shape = (config.image_size, config.image_size, 3)
    method = methods.build(config, names, shape, steps_per_epoch=100)
    batch = step_timing.random_batch(config.batch_size, shape, num_tasks, config.model.num_classes)
    start = time.perf_counter()
    try:
        compiled, state, batch = step_timing.compile_step(method, kind, batch)
    except step_timing.TooLarge as e:
        log(f"  skipped: {e}")
        return None, None
    compile_s = time.perf_counter() - start
    _, seconds = step_timing.run_steps(compiled, state, batch, repeats + 1)
    return 1e3 * statistics.median(seconds[1:]), compile_s


def base(args, method: str, **settings):
    config = get_base_config()
    config.method = method
    config.image_size, config.batch_size, config.model.width = (
        args.image_size,
        args.batch_size,
        args.width,
    )
    config.mesh.data = 1
    config.model.conv = "xla"
    config.affinity.every_n_steps = 1
    config.dmtg.num_groups = args.groups
    for path, value in settings.items():
        config = autotune.with_value(config, path.replace("__", "."), value)
    return config


def step_rows(args, num_tasks: int, rows: list, out_of_time, save) -> None:
    """Appends the step rows for `num_tasks` to `rows` (saved after each); a row whose turn comes
    after the budget is spent is recorded with "skipped": true."""
    first = len(rows)

    def add(step, kind, config, **fields):
        row = {"tasks": num_tasks, "step": step, **fields}
        if out_of_time():
            row["skipped"] = True
        else:
            try:
                ms, compile_s = median_ms(config, num_tasks, kind, args.repeats)
                row.update(ms=ms, compile_s=compile_s)
            except Exception as e:  # pylint: disable=broad-except (recorded; the next row runs)
                row["error"] = repr(e)
        rows.append(row)
        log(f"  {row}")
        save()

    add("plain", "train", base(args, "mtl"), conv="xla")
    add("plain", "train", base(args, "mtl", model__conv="im2col"), conv="im2col")
    for step in ("tag", "cs"):
        config = base(args, step)
        tunable = methods.REGISTRY[step].tuned[0]
        for strategy in tunable.candidates(config, num_tasks):
            add(step, "measured", base(args, step, affinity__strategy=strategy), strategy=strategy)
    for strategy in stacking.timing_candidates(args.groups, differentiated=True):
        add("dmtg", "train", base(args, "dmtg", dmtg__branch_strategy=strategy), strategy=strategy)
    plain = rows[first].get("ms")
    for row in rows[first:]:
        row["ratio_to_plain"] = row["ms"] / plain if row.get("ms") and plain else None
    save()


def loop_overhead(args) -> dict:
    """benchmarks/loop_overhead.py's JSON (the loop's time per step over the bare step's, plain
    MTL on the synthetic dataset, 32 steps an epoch) at the benchmark's shapes, with the default
    prefetch and with none ('no_prefetch')."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loop_overhead.py")
    command = [
        sys.executable,
        script,
        "--image_size",
        str(args.image_size),
        "--width",
        str(args.width),
        "--batch_size",
        str(args.batch_size),
        "--rounds",
        str(args.loop_rounds),
        "--num_train",
        str(32 * args.batch_size),
    ]
    out = {}
    for name, extra in (("default", []), ("no_prefetch", ["--prefetch_batches", "0"])):
        result = subprocess.run(
            command + extra,
            cwd=os.path.dirname(os.path.dirname(script)),
            capture_output=True,
            text=True,
            check=False,
        )
        out[name] = (
            {"error": result.stderr.strip().splitlines()[-1:]}
            if result.returncode
            else json.loads(result.stdout.strip().splitlines()[-1])
        )
    return out


def pipeline_rates(args) -> dict:
    with (
        input_pipeline.celeba.mock_celeba(args.batch_size * 8),
        tempfile.TemporaryDirectory() as cache_dir,
    ):
        return input_pipeline.measure(
            data_dir="",
            cache_dir=cache_dir,
            image_size=args.image_size,
            batch_size=args.batch_size,
            num_batches=8,
            repeats=3,
            workers=os.cpu_count(),
        )


def write_json(path: str, out: dict) -> None:
    """Replaces `path` (if given) with `out` as JSON, atomically."""
    if not path:
        return
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(out, f)
    os.replace(partial, path)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    device = jax.devices()[0]
    out = {
        "benchmark": "accelerator",
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "devices": jax.device_count(),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "width": args.width,
        "repeats": args.repeats,
        "steps": [],
        "skipped": [],
    }

    def out_of_time():
        return time.perf_counter() - start > args.budget_s

    def save():
        write_json(args.out, out)

    steps = [
        (f"steps_{t}", lambda t=t: step_rows(args, t, out["steps"], out_of_time, save))
        for t in args.tasks
    ]
    sections = (
        steps[:1]
        + [
            ("loop", lambda: out.update(loop=loop_overhead(args))),
            ("pipeline", lambda: out.update(pipeline=pipeline_rates(args))),
            (
                "autotune",
                lambda: out.update(autotune=autotune_check.run_checks(args, min(args.tasks))),
            ),
        ]
        + steps[1:]
    )
    for name, run in sections:
        if out_of_time():
            out["skipped"].append(name)
            continue
        log(f"{name} ({time.perf_counter() - start:.0f} s)")
        try:
            run()
        except Exception as e:  # pylint: disable=broad-except (recorded; the next section runs)
            log(f"  {name} failed: {e!r}")
            out.setdefault("errors", {})[name] = repr(e)
        out["seconds"] = time.perf_counter() - start
        save()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
