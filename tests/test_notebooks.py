"""The Colab notebooks (colab/*.ipynb): committed without outputs, and each runs top to bottom.

Every notebook is executed with nbclient in SMOKE mode (TAG_JAX_SMOKE=1: tiny sizes), its
working directory a fresh temporary folder. The kernel runs ipykernel on the interpreter running
pytest (sys.executable), whatever kernel specs are installed: `ThisInterpreterKernel` resolves
every kernel name to it, so no kernel spec needs to be installed or registered.
"""

import importlib.util
import os
import sys

import nbformat
import pytest
from helpers import one_device_fast_compile_flags
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, "colab")
NOTEBOOKS = ("tag_quickstart.ipynb", "network_selection.ipynb", "dmtg.ipynb", "celeba_study.ipynb")
# Modules written alongside the notebooks: a notebook whose module is missing is skipped.
REQUIRES = {"dmtg.ipynb": ("tag_jax.methods.dmtg",), "celeba_study.ipynb": ("tag_jax.study",)}
CELL_TIMEOUT = 900  # seconds per cell; SMOKE cells take seconds, but the CI machine is shared


class ThisInterpreterSpecs(KernelSpecManager):
    """Every kernel name is ipykernel on sys.executable, the interpreter running the tests."""

    def get_kernel_spec(self, kernel_name):
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python 3 ({sys.executable})",
            language="python",
            resource_dir=os.path.dirname(os.path.abspath(__file__)),
        )


class ThisInterpreterKernel(AsyncKernelManager):
    @default("kernel_spec_manager")
    def _default_kernel_spec_manager(self):
        return ThisInterpreterSpecs()


def read(name):
    with open(os.path.join(COLAB, name), encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)


def kernel_env(ipython_dir):
    """The tests' environment with SMOKE on, this checkout importable and one CPU device.

    conftest.py asks XLA for 8 simulated CPU devices; the notebooks run on one, as on a
    Colab CPU runtime (a tiny run split 8 ways on 2 cores is slower). A fresh IPython profile
    keeps the user's startup files out.
    """
    env = dict(
        os.environ,
        TAG_JAX_SMOKE="1",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        IPYTHONDIR=str(ipython_dir),
    )
    env["XLA_FLAGS"] = one_device_fast_compile_flags()  # SMOKE runs: compiling costs the most
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def test_every_notebook_is_listed():
    assert sorted(f for f in os.listdir(COLAB) if f.endswith(".ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "colab-badge.svg" in first.source
    assert f"/blob/main/colab/{name})" in first.source
    sources = "\n".join(cell.source for cell in code)
    assert 'os.environ.get("TAG_JAX_SMOKE") == "1"' in sources
    assert '"google.colab" in sys.modules' in sources  # pip only runs inside Colab


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch):
    missing = [m for m in REQUIRES.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}, which does not exist yet")
    nb = read(name)
    before = sorted(os.listdir(COLAB))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # the connection file
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        kernel_manager_class=ThisInterpreterKernel,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=kernel_env(tmp_path / "ipython"))  # raises CellExecutionError on any error
    assert sorted(os.listdir(COLAB)) == before  # outputs go to the temporary working directory
