"""Every command of the documentation's fenced shell blocks runs, in order, on tiny settings.

The documents are README.md, colab/README.md, docs/*.md and benchmarks/README.md. Every command
of a ```bash (or sh, shell) block is either run here, with the tiny overrides below appended,
or starts with a prefix of NOT_RUN, which says why it cannot run here; a command with neither
fails the test, so no command is skipped silently. Benchmark commands are not run (minutes to
hours each), but their script must exist and take every option the command gives it.
"""

import ast
import glob
import os
import re
import shlex
import subprocess
import sys

import numpy as np
from conftest import REPO
from helpers import one_device_fast_compile_flags

from tag_jax.data import synthetic

# Appended to every training command: the synthetic data and trunk shrunk to seconds.
TINY = [
    "--config.num_epochs=1",
    "--config.dataset.num_train=96",
    "--config.dataset.num_validation=32",
    "--config.dataset.num_test=32",
    "--config.image_size=8",
    "--config.model.width=4",
    "--config.batch_size=32",
    "--config.eval_batch_size=32",
    "--config.mesh.data=1",
    "--config.selection.time_limit=20",
    "--config.affinity.every_n_steps=1",  # a few steps: TAG and CS measure every one
    "--config.min_train_steps=0",
    "--config.early_stopping.min_steps=0",
]  # npz recipes
TINY_STUDY = [
    "--config.study.methods=('mtl', 'tag')",
    "--config.study.max_groups=(2,)",
    "--config.study.seeds=1",
]
# Added to the commands of one config: its 100 tasks take minutes to compile, even tiny; two
# planted groups of 3 run the same config in seconds (all 100: the slow test of
# test_affinity_estimators.py).
TINY_FOR_CONFIG = {
    "configs/synthetic_many_tasks.py": [
        "--config.dataset.group_sizes=(3, 3)",
        "--config.selection.max_groups=(2,)",
    ],
}
# Commands that cannot run here, by prefix, with the reason.
NOT_RUN = {
    "python3 -m venv": "makes the environment: .ci/run does it on a fresh machine",
    ". .venv/bin/activate": "enters that environment: .ci/run",
    "pip install": "installs the project: .ci/run",
    "python -m pytest": "the test suite itself",
    "python benchmarks/": "minutes to hours each, run by hand (script and options checked below)",
}
SHELL = ("bash", "sh", "shell")


def documents() -> list[str]:
    """Paths, relative to the repository, of every document whose commands are checked."""
    docs = sorted(glob.glob("*.md", root_dir=os.path.join(REPO, "docs")))
    return (
        ["README.md", os.path.join("colab", "README.md")]
        + [os.path.join("docs", name) for name in docs]
        + [os.path.join("benchmarks", "README.md")]
    )


def fenced_blocks(path: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of the document (path relative to the repository)."""
    text = open(os.path.join(REPO, path), encoding="utf-8").read()
    return re.findall(r"^```([^\n`]*)\n(.*?)^```", text, re.S | re.M)


def fenced_commands(path: str) -> list[str]:
    """The commands of every shell block, `&&`-chains split, comments dropped."""
    commands = []
    for language, block in fenced_blocks(path):
        if language.strip() not in SHELL:
            continue
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def all_commands() -> list[str]:
    return [c for path in documents() for c in fenced_commands(path)]


def not_run_reason(command: str):
    """NOT_RUN's reason for the command, or None when it is run here."""
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def runnable(command: str) -> list[str]:
    """The command's argv on tiny settings."""
    argv = shlex.split(command)
    config = next((a.removeprefix("--config=") for a in argv if a.startswith("--config=")), None)
    if argv[:3] == ["python", "-m", "tag_jax.main"]:
        argv += TINY + TINY_FOR_CONFIG.get(config, [])
    elif argv[:3] == ["python", "-m", "tag_jax.study"]:
        argv += TINY + TINY_STUDY
    elif argv[:3] == ["python", "-m", "selection"]:
        argv += ["--time-limit", "20"]
    else:
        raise AssertionError(
            f"no tiny form for the documented command {command!r}: add one in runnable(), "
            "or a prefix and the reason it cannot run to NOT_RUN"
        )
    return [sys.executable] + argv[1:]


def script_options(path: str) -> set[str]:
    """The option strings ('--x') of every add_argument call in a script."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    return {
        arg.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
        for arg in node.args
        if isinstance(arg, ast.Constant) and str(arg.value).startswith("-")
    }


def test_the_readme_has_its_two_setup_commands_first():
    commands = all_commands()
    venv = ["python3 -m venv .venv", ". .venv/bin/activate"]
    assert commands[:8] == venv + [
        "pip install -e .",
        "python -m tag_jax.main --config=configs/synthetic_tag.py --workdir=runs/quickstart",
    ] + venv + ["pip install -e '.[test]'", "python -m pytest -q"]


def test_every_fenced_block_names_its_language():
    """An untagged block could hold commands that nobody runs: each must say what it holds."""
    untagged = [path for path in documents() for lang, _ in fenced_blocks(path) if not lang.strip()]
    assert not untagged, f"fenced blocks without a language (```bash, ```text, ...) in {untagged}"


def test_the_parser_finds_commands_and_only_in_shell_blocks(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n# a comment\npython -m a --x && python -m b  # why\n```\n"
        "```python\npython -m not_a_command\n```\n```sh\npython -m c\n```\n"
    )
    assert fenced_commands(str(doc)) == ["python -m a --x", "python -m b", "python -m c"]


def test_every_reason_not_to_run_is_still_needed():
    commands = all_commands()
    unused = [p for p in NOT_RUN if not any(c.startswith(p) for c in commands)]
    assert not unused, f"NOT_RUN entries no document needs any more: {unused}"


def test_benchmark_commands_name_a_script_and_its_options():
    checked = 0
    for command in all_commands():
        if not command.startswith("python benchmarks/"):
            continue
        argv = shlex.split(command)
        script = os.path.join(REPO, argv[1])
        assert os.path.isfile(script), f"{command}: no script {argv[1]}"
        own = argv[2 : argv.index("--")] if "--" in argv else argv[2:]  # after --: passed on
        unknown = {a.split("=")[0] for a in own if a.startswith("-")} - script_options(script)
        assert not unknown, f"{command}: {argv[1]} has no option {sorted(unknown)}"
        checked += 1
    assert checked >= 5


def heading_anchors(path: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces
    as hyphens."""
    text = re.sub(r"^```.*?^```", "", open(path, encoding="utf-8").read(), flags=re.S | re.M)
    headings = re.findall(r"^#+ (.*)$", text, re.M)
    return {
        "".join(c for c in h.lower() if c.isalnum() or c in " -_").replace(" ", "-")
        for h in headings
    }


def test_every_relative_link_resolves():
    """Moving text between pages must not leave a link to a missing file or heading."""
    broken = []
    for doc in documents():
        text = open(os.path.join(REPO, doc), encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), path or doc))
            if not os.path.exists(full):
                broken.append(f"{doc}: {target} (no such file)")
            elif anchor and full.endswith(".md") and anchor not in heading_anchors(full):
                broken.append(f"{doc}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_citation_of_docs_in_the_code_resolves():
    """Docstrings and comments cite docs/<page>.md#<heading>: the page and heading must exist."""
    broken, cited = [], 0
    for folder in ("tag_jax", "selection", "configs", "benchmarks", "tests"):
        for path in glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True):
            text = open(path, encoding="utf-8").read()
            for page, anchor in re.findall(r"\bdocs/([\w.-]+\.md)#([\w-]+)", text):
                cited += 1
                full = os.path.join(REPO, "docs", page)
                if not os.path.exists(full) or anchor not in heading_anchors(full):
                    broken.append(f"{os.path.relpath(path, REPO)}: docs/{page}#{anchor}")
    assert cited >= 10 and not broken, "\n".join(broken)


def write_my_npz(path):
    """The `my.npz` the README's own-data commands read: 160 synthetic 8x8 uint8 images, 4 tasks."""
    images, labels = synthetic.generate(
        160,
        image_size=8,
        group_sizes=(2, 2),
        noise=0.5,
        task_noise=0.05,
        label_noise=0.0,
        seed=0,
        split="train",
    )
    pixels = np.round(255 * (images - images.min()) / (images.max() - images.min()))
    np.savez(
        path,
        images=pixels.astype(np.uint8),
        labels=labels,
        task_names=np.array(["a", "b", "c", "d"]),
    )


def test_every_documented_command_runs_in_order(tmp_path):
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    os.symlink(os.path.join(REPO, "docs"), tmp_path / "docs")
    write_my_npz(tmp_path / "my.npz")
    env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": one_device_fast_compile_flags()}
    ran = 0
    for command in all_commands():
        if not_run_reason(command):
            continue
        proc = subprocess.run(
            runnable(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, command
        ran += 1
    assert ran >= 10
    assert (tmp_path / "runs" / "quickstart" / "groups.json").exists()
    assert (tmp_path / "runs" / "study" / "report.md").exists()
