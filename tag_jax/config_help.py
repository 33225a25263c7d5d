"""Config keys with their defaults and one-line meanings, for `--help`.

Meanings come from the comments where the keys are defined: the trailing
comment of `config.<key> = ...` in tag_jax/default_config.get_base_config and of
`cfg.<key> = ...` in each block's defaults function (tag_jax.default_config.blocks()),
or the full-line comments just above it.
"""

import inspect
import re

from tag_jax import default_config

_ASSIGNMENT = re.compile(r"^\s*(config|cfg)\.([\w.]+)\s*=\s*(.*?)(?:\s+#\s*(.*))?$")


def meanings_in(source: str, block: str = "") -> dict:
    """{dotted key: meaning} from `config.key = v  # meaning` / `cfg.key = v` lines of `source`."""
    meanings, above = {}, []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = _ASSIGNMENT.match(line)
        if match:
            key = f"{block}.{match.group(2)}" if block else match.group(2)
            text = " ".join(above + [match.group(4) or ""]).strip()
            if text:
                meanings[key] = text
        above = []
    return meanings


def all_meanings() -> dict:
    meanings = meanings_in(inspect.getsource(default_config.get_base_config))
    for block in default_config.blocks():
        if block.defaults:
            meanings.update(meanings_in(inspect.getsource(block.defaults), block.name))
    return meanings


def flat_items(config, prefix: str = ""):
    """(dotted key, value) of every leaf of a ConfigDict, in definition order."""
    for key, value in config.items():
        if hasattr(value, "items") and not isinstance(value, dict):
            yield from flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def describe(config) -> str:
    """One line per config key: `key = value` and, where known, `  # meaning`."""
    meanings = all_meanings()
    lines = []
    for key, value in flat_items(config):
        text = f"  {key} = {value!r}"
        if key in meanings:
            text = f"{text:<44} # {meanings[key]}"
        lines.append(text)
    return "\n".join(lines)
