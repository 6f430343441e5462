"""The notebooks in notebooks/: each runs top to bottom, as on Colab, with plots.

``test_notebook_runs_from_the_wheel`` is what a Colab user does: a new
virtual environment outside the checkout, holding only ipykernel, runs each
notebook in a Jupyter kernel, and the notebook's first cell installs the
package with pip from ``OPTAX_LOOKAHEAD_SPEC`` (here, the wheel built from this
checkout, with its ``examples`` extra; pip takes CI's versions from
requirements/ci.txt). The first notebook to run takes the install path; the
others find the package installed and skip it. Each runs in the reduced-size
mode (``OPTAX_LOOKAHEAD_NOTEBOOK_QUICK=1``: tiny data, few steps), with JAX's
default settings (not the strict promotion of this test suite) on one CPU
device, and fails on any error or when it draws no image.

``test_saved_outputs`` checks the notebooks as committed: executed top to
bottom, with their plots, small, and without local paths in their outputs. The
other tests check the first cell, the badges and the imports without running
anything.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = [
    "01_quickstart.ipynb",
    "02_lazy_embeddings_imdb.ipynb",
    "03_lookahead_robustness.ipynb",
]
# A cell may pip install the package and its extra (about a minute from pip's
# cache on 2 cores).
CELL_TIMEOUT_S = 600
MAX_BYTES = 1_500_000
# Outputs must not show where the notebook was run: home folders, temporary
# folders, installed packages, this checkout.
LOCAL_PATH = re.compile(
    r"/home/|/Users/|/root/|/tmp/|site-packages|[A-Za-z]:\\|" + re.escape(str(ROOT))
)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The one place the repository's address lives (a placeholder for now).
GITHUB = PYPROJECT["tool"]["optax_lookahead"]["github"]
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(name: str) -> str:
    return (
        f"https://colab.research.google.com/github/{GITHUB}/blob/main/notebooks/{name}"
    )


def read(name):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def images(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in code_cells(notebook)
        for output in cell.outputs
    )


def text_outputs(notebook):
    for cell in code_cells(notebook):
        for output in cell.outputs:
            if output.output_type == "stream":
                yield output.text
            elif output.output_type == "error":
                yield "\n".join(output.traceback)
            else:
                for kind, value in output.get("data", {}).items():
                    if kind.startswith("text/"):
                        yield value if isinstance(value, str) else "".join(value)


@pytest.fixture(scope="module")
def fresh_kernel(tmp_path_factory):
    """A "python3" Jupyter kernel in a new venv outside the checkout.

    The venv holds only ipykernel: the notebooks' first cell installs the rest.
    Returns the folder the kernel runs in and the venv's folder.
    """
    home = tmp_path_factory.mktemp("colab")
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "ipykernel"]
    env = {**os.environ, "PIP_CONSTRAINT": str(ROOT / "requirements" / "ci.txt")}
    result = subprocess.run(
        install, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    spec = home / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "fresh venv", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return home, venv


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_from_the_wheel(name, fresh_kernel, built_dist, monkeypatch):
    home, venv = fresh_kernel
    wheel, _ = built_dist
    # JUPYTER_PATH comes first in Jupyter's search path, ahead of any
    # user-wide "python3" kernel.
    monkeypatch.setenv("JUPYTER_PATH", str(home / "jupyter"))
    monkeypatch.setenv("OPTAX_LOOKAHEAD_SPEC", f"{wheel}[examples]")
    monkeypatch.setenv("PIP_CONSTRAINT", str(ROOT / "requirements" / "ci.txt"))
    monkeypatch.setenv("OPTAX_LOOKAHEAD_NOTEBOOK_QUICK", "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    # The root conftest.py forces 8 host devices for this process only.
    flags = os.environ.get("XLA_FLAGS", "")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags).strip()
    monkeypatch.setenv("XLA_FLAGS", flags)

    notebook = read(name)
    # One more cell, run last: where the packages were imported from.
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            "import optax_lookahead, optax_lookahead_experiments, sys\n"
            "print(sys.prefix)\n"
            "print(optax_lookahead.__file__)\n"
            "print(optax_lookahead_experiments.__file__)"
        )
    )
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(home)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, on an error
    assert images(notebook) >= 1, f"{name} drew no image"
    prefix, *files = notebook.cells[-1].outputs[0].text.split()
    assert pathlib.Path(prefix) == venv
    for file in files:  # from the installed wheel, not from this checkout
        assert pathlib.Path(file).is_relative_to(venv / "lib"), file


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_saved_outputs(name):
    path = NOTEBOOK_DIR / name
    notebook = read(name)
    nbformat.validate(notebook)
    assert path.stat().st_size < MAX_BYTES
    code = code_cells(notebook)
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), "not run top to bottom"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name} was saved with an error"
    assert images(notebook) >= 1, f"{name} was saved without its plots"
    for text in text_outputs(notebook):
        match = LOCAL_PATH.search(text)
        assert match is None, f"{name}: a local path in an output: {match.group()}"


def test_one_install_cell_read_from_one_documented_place():
    """Every notebook's first code cell is the same install cell.

    It reads what to install from ``OPTAX_LOOKAHEAD_SPEC``, whose default the
    README's Install section (the docs' install page) documents.
    """
    first_cells = {code_cells(read(name))[0].source for name in NOTEBOOKS}
    assert len(first_cells) == 1, "the notebooks' first code cells differ"
    (cell,) = first_cells
    (default,) = re.findall(
        r'os\.environ\.get\("OPTAX_LOOKAHEAD_SPEC"\) or "([^"]+)"', cell
    )
    assert default == "optax_lookahead[examples]"
    assert "%pip install" in cell and "OPTAX_LOOKAHEAD_REPO" not in cell
    readme = (ROOT / "README.md").read_text()
    install = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    assert "OPTAX_LOOKAHEAD_SPEC" in install
    assert f"`{default}`" in install
    assert "% README: Install" in (ROOT / "docs/guides/install.md").read_text()


def test_open_in_colab_badges_use_the_one_repository_address():
    """Each notebook opens with its badge; the README shows all of them."""
    readme = (ROOT / "README.md").read_text()
    for name in NOTEBOOKS:
        badge = f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(name)})"
        intro = read(name).cells[0]
        assert intro.cell_type == "markdown"
        assert intro.source.startswith(badge), (name, badge)
        assert badge in readme, (name, badge)
    links = re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", readme)
    assert set(links) == {colab_url(name) for name in NOTEBOOKS}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_imports_without_path_tricks(name):
    """The notebooks import the installed packages, never a checkout's files."""
    notebook = read(name)
    code = "\n".join(c.source for c in code_cells(notebook))
    assert "sys.path" not in code
    assert "git clone" not in code
    assert "examples/" not in code
    # The experiments are the installed package optax_lookahead_experiments.
    assert not re.search(r"^\s*(from|import) experiments\b", code, flags=re.M)
    text = "\n".join(c.source for c in notebook.cells)
    # The old flat modules moved into the experiments package.
    for old in ("imdb_data", "imdb_report", "imdb_optimizers", "lr_sweep_digits"):
        assert f"import {old}" not in code, old
        assert f"examples/{old}.py" not in text, old
