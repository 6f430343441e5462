"""The notebooks in notebooks/: each runs top to bottom and draws its plots.

``test_notebook_runs`` executes every notebook in a fresh Jupyter kernel on
this interpreter, in the reduced-size mode (``OPTAX_LOOKAHEAD_NOTEBOOK_QUICK=1``:
tiny data, few steps), and fails on any error or when a notebook draws no
image. The kernel runs with JAX's default settings (not the strict promotion of
this test suite) on one CPU device. ``test_saved_outputs`` checks the notebooks
as committed: executed top to bottom, with their plots, small, and without
local paths in their outputs. ``test_imports_without_path_tricks`` checks that
the notebooks import the repository's experiments as the package
``experiments`` (installed with the project), never by editing ``sys.path``.
"""

import os
import pathlib
import re

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = [
    "01_quickstart.ipynb",
    "02_lazy_embeddings_imdb.ipynb",
    "03_lookahead_robustness.ipynb",
]
CELL_TIMEOUT_S = 300
MAX_BYTES = 1_500_000
# Outputs must not show where the notebook was run: home folders, temporary
# folders, installed packages, this checkout.
LOCAL_PATH = re.compile(
    r"/home/|/Users/|/root/|/tmp/|site-packages|[A-Za-z]:\\|" + re.escape(str(ROOT))
)


def images(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def text_outputs(notebook):
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.output_type == "stream":
                yield output.text
            elif output.output_type == "error":
                yield "\n".join(output.traceback)
            else:
                for kind, value in output.get("data", {}).items():
                    if kind.startswith("text/"):
                        yield value if isinstance(value, str) else "".join(value)


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A "python3" kernel on this interpreter, in quick mode, with one device."""
    # JUPYTER_PATH comes first in Jupyter's search path, ahead of any
    # user-wide "python3" kernel that may run another interpreter.
    write_kernel_spec(tmp_path / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("OPTAX_LOOKAHEAD_NOTEBOOK_QUICK", "1")
    # The root conftest.py forces 8 host devices for this process only.
    flags = os.environ.get("XLA_FLAGS", "")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags).strip()
    monkeypatch.setenv("XLA_FLAGS", flags)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, kernel_env):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, on an error
    assert images(notebook) >= 1, f"{name} drew no image"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_saved_outputs(name):
    path = NOTEBOOK_DIR / name
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert path.stat().st_size < MAX_BYTES
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), "not run top to bottom"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name} was saved with an error"
    assert images(notebook) >= 1, f"{name} was saved without its plots"
    for text in text_outputs(notebook):
        match = LOCAL_PATH.search(text)
        assert match is None, f"{name}: a local path in an output: {match.group()}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_imports_without_path_tricks(name):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "sys.path" not in code
    assert "examples/" not in code
    text = "\n".join(c.source for c in notebook.cells)
    # The old flat modules moved into the experiments package.
    for old in ("imdb_data", "imdb_report", "imdb_optimizers", "lr_sweep_digits"):
        assert f"import {old}" not in code, old
        assert f"examples/{old}.py" not in text, old
