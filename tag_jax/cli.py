"""What both command lines (tag_jax.main, tag_jax.study) share: flags, parsing, logging, errors.

    python -m tag_jax.main  --config=configs/synthetic_tag.py   --workdir=runs/x [--config.k=v]
    python -m tag_jax.study --config=configs/synthetic_study.py --workdir=runs/s [--config.k=v]

A mistake the user can fix (UserError, a bad flag or config file, a failed
write) is one line `error: ...` on stderr and exit status 2 (3: the training
diverged); Ctrl-C exits with 130 and SIGTERM with 143 (tag_jax.interrupts); the
process never waits on a library's background thread to end.
"""

import importlib.util
import logging as py_logging
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from tag_jax import interrupts
from tag_jax.errors import UserError

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (get_config()).", lock_config=True
)
WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])
RESTART = flags.DEFINE_bool(
    "restart",
    False,
    "Start over: once the config and data pass their checks, delete the "
    "checkpoints, metrics and outputs in --workdir instead of resuming from them.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process job: jax.distributed.initialize() auto-detects "
    "TPU pod slices, SLURM and Open MPI; or give the three flags below.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process job by hand."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def one_line(error: BaseException) -> str:
    """The error's message on one line (a wrapped error's own text, a KeyError's text, not its
    repr)."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")


def config_file_in(argv) -> str:
    """The --config=FILE (or --config FILE) of a command line, '' if none."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def load_config_file(spec: str):
    """get_config() of --config=FILE[:ARG], as config_flags loads it; UserError (one line) for a
    missing or broken file, no get_config(), or one that fails or returns no ConfigDict."""
    import ml_collections  # pylint: disable=g-import-not-at-top

    path, colon, argument = spec.partition(":")
    shown = f"--config={spec}"
    if not os.path.isfile(path):
        raise UserError(
            f"{shown}: {'is a folder' if os.path.isdir(path) else 'no such file'}; give "
            "a config file defining get_config() (see configs/)"
        )
    try:
        module_spec = importlib.util.spec_from_file_location("tag_jax_user_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{shown}: syntax error at line {e.lineno}: {e.msg}") from e
    except Exception as e:  # whatever the file's own code raises
        raise UserError(
            f"{shown}: the file fails to load ({type(e).__name__}: {one_line(e)})"
        ) from e
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"{shown}: the file defines no get_config() (see configs/ for examples)")
    try:
        config = module.get_config(*([argument] if colon else []))
    except Exception as e:  # whatever get_config raises
        raise UserError(f"{shown}: get_config() raised {type(e).__name__}: {one_line(e)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(
            f"{shown}: get_config() must return an ml_collections.ConfigDict, got "
            f"{type(config).__name__}"
        )
    return config


VERBOSITY_HELP = (
    "what the console shows: 0 (default) progress, one line per epoch, compile and autotune "
    "notices and the answer; 1 also every metric as it is logged (metrics.jsonl and TensorBoard "
    "always have them all); -1 warnings and the answer only."
)


def print_help(argv) -> None:
    """Usage, this tool's flags, and every config key with its default and meaning."""
    from tag_jax import config_help, default_config  # pylint: disable=g-import-not-at-top

    main_doc = (sys.modules["__main__"].__doc__ or "").strip().splitlines()
    print(main_doc[0] if main_doc else "python -m tag_jax.main --config=FILE --workdir=DIR")
    print("\nflags:")
    for flag in (CONFIG, WORKDIR, RESTART, _DISTRIBUTED, _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID):
        print(f"  --{flag.name}: {flags.FLAGS[flag.name].help}")
    print(f"  --verbosity: {VERBOSITY_HELP}")
    path = config_file_in(argv)
    try:
        config = load_config_file(path) if path else default_config.get_base_config()
    except Exception as e:  # a broken config file: say so, still list the base keys
        print(f"\n(could not load --config={path}: {one_line(e)}; showing the base config)")
        config, path = default_config.get_base_config(), ""
    print(
        f"\nconfig keys ({path or 'tag_jax/default_config.py'}), each settable as "
        "--config.KEY=VALUE:"
    )
    print(config_help.describe(config))
    if "--helpfull" in argv:
        print("\nall flags:\n" + flags.FLAGS.get_help())


def help_hint(argv) -> str:
    """Where every command-line error points: --help with the user's config file, which lists this
    tool's flags and every config key with its value and meaning."""
    return f"--help --config={config_file_in(argv) or 'FILE'} lists the flags and config keys"


def parse_flags(argv):
    """absl parsing, but a bad flag or --config.key (unknown, wrong type) is one line and exit 2;
    --help lists the flags and config keys and exits 0."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print_help(argv)
        sys.exit(0)
    if config_file_in(argv):
        try:
            load_config_file(config_file_in(argv))
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(e.exit_code)
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # config_flags: --config.<key> that the config lacks
        key, _, suggestion = one_line(e).partition(" ")
        hint = (
            f"; {suggestion[0].lower()}{suggestion[1:]}" if suggestion.startswith("Did you") else ""
        )
        print(
            f"error: unknown config key {key.strip(chr(34) + chr(39))!r} on the command line{hint}"
            f" ({help_hint(argv)})",
            file=sys.stderr,
        )
    except (flags.Error, TypeError, ValueError) as e:
        print(
            f"error: bad command line: {one_line(e)} ({help_hint(argv)})",
            file=sys.stderr,
        )
    sys.exit(2)


class QuietLibraries(py_logging.Filter):
    """Keeps the console to this tool's own progress: drops INFO chatter of checkpoint and JAX
    internals (e.g. the backends JAX tried and did not find)."""

    def filter(self, record):
        return record.levelno >= py_logging.WARNING or not any(
            part in record.pathname for part in ("/orbax/", "/jax/_src/")
        )


class ConsoleFormatter(py_logging.Formatter):
    """'20:33:56 message', '20:33:56 WARNING: message': the time and the message, without absl's
    date, thread and source location (those stay at --verbosity=1)."""

    def __init__(self):
        super().__init__(datefmt="%H:%M:%S")

    def formatMessage(self, record):
        level = record.levelname
        marked = record.levelno < py_logging.WARNING or record.message.startswith(level)
        return f"{record.asctime} {'' if marked else level + ': '}{record.message}"

    def usesTime(self):
        return True


def initialize_distributed() -> None:
    """jax.distributed.initialize() when the flags ask for a multi-process job."""
    import jax  # pylint: disable=g-import-not-at-top

    if _COORDINATOR.value:
        # Collectives between CPU processes (ignored on GPU/TPU); must not touch the backend yet.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def exit_now(code: int) -> None:
    """Exits with `code` after flushing output, without the interpreter's shutdown: it would wait
    on background threads a library left running (a failed orbax save kept the process alive
    forever) or tear down under native ones (an interrupt during XLA's start-up or compilation
    ended in a segmentation fault). The run's files are complete by then: checkpoints are saved
    synchronously and the writers flushed as the run closes."""
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


INTERRUPTED = "error: interrupted; re-run the same command to resume"
TERMINATED = (
    "error: terminated (SIGTERM) before a new checkpoint; re-run the same command to resume "
    "from the last one"
)


def exit_interrupted() -> None:
    """The interrupted line on stderr, then exit status 130 (tag_jax.interrupts)."""
    print(INTERRUPTED, file=sys.stderr)
    exit_now(130)


def exit_terminated(line: str = TERMINATED) -> None:
    """The terminated line on stderr, then exit status 143 (tag_jax.interrupts)."""
    print(line, file=sys.stderr)
    exit_now(interrupts.TERMINATED_EXIT_CODE)


def run(job) -> None:
    """app.run of job(config, workdir, restart=...): a UserError or a failed write is one line on
    stderr and exit status 2 (TrainingDiverged: 3), Terminated (SIGTERM, checkpoint saved) one line
    and 143; any other error a traceback and status 1."""

    def main(argv):
        interrupts.raise_if_received()  # one swallowed while the config file imported JAX
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.get_absl_handler().addFilter(QuietLibraries())
        if flags.FLAGS.verbosity < 1:
            logging.get_absl_handler().setFormatter(ConsoleFormatter())
        initialize_distributed()
        try:
            job(CONFIG.value, WORKDIR.value, restart=RESTART.value)
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            exit_now(e.exit_code)
        except OSError as e:  # a write the disk refused (full, read-only, path too long)
            where = f" ({e.filename})" if e.filename else ""
            print(
                f"error: {e.strerror or one_line(e)}{where}; free space or pick a writable "
                "--workdir, then re-run to resume",
                file=sys.stderr,
            )
            exit_now(2)
        except KeyboardInterrupt:
            exit_interrupted()
        except interrupts.Terminated as e:  # the loop saved a checkpoint first
            exit_terminated(f"error: {one_line(e)}")
        except Exception:  # pylint: disable=broad-except (a bug: the traceback, then exit, no hang)
            traceback.print_exc()
            exit_now(1)

    interrupts.install(exit_interrupted, exit_terminated)
    try:
        app.run(main, flags_parser=parse_flags)
    except KeyboardInterrupt:  # while the flags and config file load
        exit_interrupted()
