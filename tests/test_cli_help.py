"""Command-line errors all point to one help: --help with the user's config file."""

import sys

import pytest
from absl import flags

from tag_jax import cli

CONFIG = "configs/tiny_test.py"


@pytest.fixture
def parse_error(capsys, monkeypatch):
    """parse_error(*args) -> the stderr line of a command line that must fail with exit status 2;
    the absl flags are left unparsed afterwards."""

    def parse(*args):
        argv = ["tag_jax.main", *args]
        monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
        with pytest.raises(SystemExit) as stop:
            cli.parse_flags(argv)
        assert stop.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        return line

    yield parse
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "args, problem",
    [
        ((f"--config={CONFIG}", "--workdir=w", "--config.no_such_key=1"), "unknown config key"),
        ((f"--config={CONFIG}", "--workdir=w", "--config.num_epochs=abc"), "num_epochs=abc"),
        ((f"--config={CONFIG}", "--wokdir=w"), "wokdir"),
        ((f"--config={CONFIG}",), "--workdir"),
    ],
)
def test_every_command_line_error_points_to_help_with_the_users_config(parse_error, args, problem):
    line = parse_error(*args)
    assert line.startswith("error:") and problem in line
    assert line.endswith(f"(--help --config={CONFIG} lists the flags and config keys)")
    assert "helpfull" not in line


def test_the_help_an_error_points_to_lists_the_flags_and_that_configs_keys(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.parse_flags(["tag_jax.main", "--help", f"--config={CONFIG}"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--workdir:" in out and f"config keys ({CONFIG})" in out
    assert "num_epochs = " in out


def test_the_hint_without_a_config_file_names_the_flag_to_give():
    assert cli.help_hint(["m", "--wokdir=x"]).startswith("--help --config=FILE ")
