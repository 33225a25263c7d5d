"""Faults in run files, signals and resources: each is a one-line error (or a documented exit),
never a traceback, and nothing the project did not write is touched (docs/faults.md)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from tag_jax import checkpointing, cli
from tag_jax.errors import UserError


def saved_checkpoint(tmp_path, meta=None):
    """A manager over tmp_path/checkpoints holding step 3 of a two-leaf state; the state."""
    manager = checkpointing.create_manager(str(tmp_path), keep=2)
    state = {"w": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    checkpointing.save(manager, 3, state, meta or {"epoch": 1, "batch": 0})
    return manager, state


def rewrite(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def assert_damaged(error: UserError, what: str) -> None:
    message = str(error)
    assert "\n" not in message and cli.one_line(error) == message
    assert message.startswith("checkpoint ") and " is damaged (" in message, message
    assert what in message, message
    assert message.endswith("or re-run with --restart to start over"), message


CHECKSUM_FILES = [
    ("a list", "[1, 2]", "checksums.json is not an object of file names and sha256 digests"),
    ("a string", '"abc"', "is not an object of file names"),
    ("null", "null", "is not an object of file names"),
    ("a number", "1e999", "is not an object of file names"),
    ("digests not strings", '{"meta/metadata": 3}', "is not an object of file names"),
    ("truncated", '{"meta/metadata": "ab', "checksums.json is unreadable (Unterminated string"),
    ("deeply nested", "[" * 100_000 + "]" * 100_000, "checksums.json is unreadable ("),
    ("empty", "", "checksums.json is unreadable (Expecting value"),
    ("an empty object", "{}", "differs from its checksum"),
    ("a file the step lacks", None, "zzz is missing"),  # the true digests and one more
]


@pytest.mark.parametrize(
    "text, what", [c[1:] for c in CHECKSUM_FILES], ids=[c[0] for c in CHECKSUM_FILES]
)
def test_a_damaged_checksums_file_of_any_shape_is_one_line(tmp_path, text, what):
    manager, state = saved_checkpoint(tmp_path)
    folder = checkpointing.step_dir(manager, 3)
    if text is None:
        text = json.dumps({**checkpointing.file_checksums(folder), "zzz": "00"})
    rewrite(os.path.join(folder, checkpointing.CHECKSUMS), text)
    with pytest.raises(checkpointing.CheckpointError) as info:
        checkpointing.restore_latest(manager, state)
    assert_damaged(info.value, what)


def strict_meta(meta: dict) -> dict:
    """A reader like the loop's: 'epoch' and 'batch' required, integers."""
    for key in ("epoch", "batch"):
        if not isinstance(meta[key], int):
            raise TypeError(f"{key} is {meta[key]!r}, not an integer")
    return meta


META_FILES = [
    (
        "an empty object",
        {},
        "its loop record (meta) is not one this version writes: missing 'epoch'",
    ),
    ("a list", [1, 2], "its loop record (meta) is not one this version writes: a JSON list"),
    ("a string", "epoch", "a JSON str, not an object"),
    ("a value of the wrong type", {"epoch": "one", "batch": 0}, "epoch is 'one', not an integer"),
]


@pytest.mark.parametrize("meta, what", [c[1:] for c in META_FILES], ids=[c[0] for c in META_FILES])
def test_checkpoint_meta_of_the_wrong_shape_is_one_line_even_with_matching_checksums(
    tmp_path, meta, what
):
    manager, state = saved_checkpoint(tmp_path)
    folder = checkpointing.step_dir(manager, 3)
    rewrite(os.path.join(folder, "meta", "metadata"), json.dumps(meta))
    rewrite(  # checksums that match: a checkpoint another version wrote, not a damaged file
        os.path.join(folder, checkpointing.CHECKSUMS),
        json.dumps(checkpointing.file_checksums(folder)),
    )
    with pytest.raises(checkpointing.CheckpointError) as info:
        checkpointing.restore_latest(manager, state, read_meta=strict_meta)
    assert_damaged(info.value, what)


def test_an_intact_checkpoint_restores_through_the_meta_reader(tmp_path):
    manager, state = saved_checkpoint(tmp_path, meta={"epoch": 2, "batch": 5})
    restored, meta = checkpointing.restore_latest(manager, state, read_meta=strict_meta)
    assert meta == {"epoch": 2, "batch": 5}
    np.testing.assert_array_equal(restored["w"], state["w"])
