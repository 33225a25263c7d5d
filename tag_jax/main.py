"""Command line: python -m tag_jax.main --config=configs/synthetic_mtl.py --workdir=runs/x [--config.k=v]."""

import logging as py_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow (behind clu) start-up chatter

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tag_jax import train  # noqa: E402
from tag_jax.errors import UserError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process job: jax.distributed.initialize() auto-detects "
    "TPU pod slices, SLURM and Open MPI; or give the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for a multi-process job by hand.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


def parse_flags(argv):
  """absl parsing, but a bad flag or --config.key (unknown, wrong type) is one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # config_flags: --config.<key> that the config lacks
    key = one_line(e).strip("\"'")
    print(f"error: unknown config key {key!r} on the command line; check the spelling against "
          "the config file", file=sys.stderr)
  except (flags.Error, TypeError, ValueError) as e:
    print(f"error: bad command line: {one_line(e)} (see --helpfull and the config file)",
          file=sys.stderr)
  sys.exit(2)


class _QuietLibraries(py_logging.Filter):
  """Keeps the console to this tool's own progress: drops INFO chatter of checkpoint internals."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def initialize_distributed() -> None:
  """jax.distributed.initialize() when the flags ask for a multi-process job."""
  import jax  # pylint: disable=g-import-not-at-top

  if _COORDINATOR.value:
    # Collectives between CPU processes (ignored on GPU/TPU); must not touch the backend yet.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  initialize_distributed()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
