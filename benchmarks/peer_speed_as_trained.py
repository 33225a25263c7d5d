"""An external side-by-side harness (a folder holding `bench.py` that times TF2, PyTorch and
this project's steps in one process; it is not part of this repository) run with the project's
steps compiled as the training loop compiles them.

  python benchmarks/peer_speed_as_trained.py --harness PATH/TO/HARNESS -- \
      --fw tf,torch,proj --size 32 --batch 32 --reps 5 --proj-variants mtl,tag_auto,dmtg

Everything after `--` goes to bench.py unchanged, and it prints bench.py's JSON line. Two
things differ from running bench.py directly, both as in `tag_jax.train`:
- every jit of a project step passes the method's `compiler_options` (bench.py's
  `jax.jit(step, donate_argnums=0)` drops them, so a step that autotune compiled as
  'xla_threaded' runs there as 'xla': XLA's convolutions on one core);
- `config.batch_size` is the harness's batch, so autotune decides 'auto' on the shapes that are
  timed (bench.py leaves the default 256, and decides for batch 256).
Each project variant's `proj_info` also holds `autotune`: what 'auto' became (Method.autotune).
One more side effect: tag_jax is imported before bench.py imports TensorFlow and PyTorch, so its
allocator setting (tag_jax/host_memory.py) holds for their threads too.
"""

import argparse
import os
import sys
import types

import jax

from tag_jax import methods


def harness_batch(bench_args) -> int:
    """bench.py's --batch among its arguments (its default, 32, if absent)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--batch", type=int, default=32)
    return parser.parse_known_args(bench_args)[0].batch


def compile_as_trained(project_impl, batch_size: int) -> None:
    """Patches the harness's project_impl module: its configs get `batch_size`, and its jax.jit
    passes the compiler_options of the method methods.build returned last (project_impl jits a
    method's steps right after building it)."""
    built = []

    def build(*args, **kwargs):
        built.append(methods.build(*args, **kwargs))
        return built[-1]

    def jit(fn, **kwargs):
        method = built[-1]
        assert fn in (method.init_state, method.train_step, method.measured_step), (
            "project_impl no longer jits a method's steps right after building it; adapt this file"
        )
        return jax.jit(fn, compiler_options=method.compiler_options, **kwargs)

    describe = project_impl.describe

    def describe_as_built(config):
        return {**describe(config), "autotune": built[-1].autotune}

    jax_as_trained = types.ModuleType("jax_as_trained")
    jax_as_trained.__getattr__ = lambda name: getattr(jax, name)
    jax_as_trained.jit = jit
    project_impl.jax = jax_as_trained
    project_impl.methods = types.SimpleNamespace(validate=methods.validate, build=build)
    make_config = project_impl.make_config

    def make_config_at_batch(name):
        config, which = make_config(name)
        config.batch_size = batch_size
        return config, which

    project_impl.make_config = make_config_at_batch
    project_impl.describe = describe_as_built


def main():
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harness", required=True, help="folder holding the harness's bench.py")
    args = parser.parse_args(argv[:split])
    bench_args = argv[split + 1 :]
    sys.path.insert(0, os.path.abspath(args.harness))
    import bench  # pylint: disable=import-outside-toplevel,import-error
    import project_impl  # pylint: disable=import-outside-toplevel,import-error

    compile_as_trained(project_impl, harness_batch(bench_args))
    sys.argv = [os.path.join(args.harness, "bench.py")] + bench_args
    bench.main()


if __name__ == "__main__":
    main()
