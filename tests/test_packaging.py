"""The wheel and the sdist hold what users need, and the metadata tells the truth.

Both are built from this checkout once per session (the ``built_dist`` fixture
of tests/conftest.py).
"""

import email
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_FILES = {p.name for p in (ROOT / "optax_lookahead").iterdir() if p.is_file()}
PACKAGE_FILES = {n for n in PACKAGE_FILES if n.endswith((".py", "py.typed"))}
# The experiments the notebooks import ship in the same wheel, as a top-level
# package of their own; the GPU grid script, which needs a checkout, does not.
EXPERIMENTS = ROOT / "optax_lookahead_experiments"
EXPERIMENT_FILES = {
    p.relative_to(EXPERIMENTS).as_posix() for p in EXPERIMENTS.rglob("*.py")
}
# What the sdist holds besides the package; hatchling adds .gitignore itself.
SDIST_TEXTS = {
    "CHANGELOG.md",
    "CITATION.cff",
    "CONTRIBUTING.md",
    "LICENSE",
    "PKG-INFO",
    "README.md",
    "pyproject.toml",
    ".gitignore",
}


PACKAGES = ("optax_lookahead/", "optax_lookahead_experiments/")


def files_under(names: list[str], folder: str) -> set[str]:
    return {n.split("/", 1)[1] for n in names if n.startswith(folder + "/")}


@pytest.mark.slow
def test_wheel_holds_the_packages_the_types_marker_and_the_license(built_dist):
    wheel, _ = built_dist
    names = zipfile.ZipFile(wheel).namelist()
    package = files_under(names, "optax_lookahead")
    assert package == PACKAGE_FILES
    assert "py.typed" in package
    assert files_under(names, "optax_lookahead_experiments") == EXPERIMENT_FILES
    others = [n for n in names if not n.startswith(PACKAGES)]
    assert all(".dist-info/" in n for n in others), others
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in others)


@pytest.mark.slow
def test_sdist_holds_the_packages_and_texts_and_nothing_else(built_dist):
    _, sdist = built_dist
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    assert files_under(names, "optax_lookahead") == PACKAGE_FILES
    assert files_under(names, "optax_lookahead_experiments") == EXPERIMENT_FILES
    others = {n for n in names if not n.startswith(PACKAGES)}
    # No results, logs, plots, notebooks, benchmarks, CI or GPU scripts, tests.
    assert others == SDIST_TEXTS


@pytest.mark.slow
def test_metadata_license_authors_urls_and_extras(built_dist):
    wheel, _ = built_dist
    with zipfile.ZipFile(wheel) as z:
        (path,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(z.read(path))
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "optax_lookahead developers" in metadata["Author"]
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert {"homepage", "documentation", "source"} <= {k.lower() for k in urls}
    assert set(metadata.get_all("Provides-Extra")) == {
        "docs",
        "examples",
        "flax",
        "test",
    }
    # Every requirement is a range or a floor, never an exact pin: exact pins
    # live in requirements/ci.txt and requirements/min.txt.
    for requirement in map(Requirement, metadata.get_all("Requires-Dist")):
        assert all(s.operator != "==" for s in requirement.specifier), requirement


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_lower_bounds_are_the_versions_the_minimum_job_installs():
    """pyproject's floors and requirements/min.txt are one fact, kept equal."""
    minimum = _pins(ROOT / "requirements" / "min.txt")
    floors = {}
    for requirement in PYPROJECT["project"]["dependencies"]:
        name, version = re.fullmatch(r"([\w.-]+)>=([\w.]+).*", requirement).groups()
        floors[name.lower()] = version
    floors["flax"] = re.fullmatch(
        r"flax>=([\w.]+)", PYPROJECT["project"]["optional-dependencies"]["flax"][0]
    ).group(1)
    for name, floor in floors.items():
        assert name in minimum, f"requirements/min.txt does not pin {name}"
        assert Version(minimum[name]) == Version(floor), (name, minimum[name], floor)
    # requires-python names the Python that .ci/run gives the minimum job.
    python = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert f"MIN_PYTHON={python}" in (ROOT / ".ci" / "run").read_text()


def test_ci_pins_satisfy_the_declared_ranges():
    """Each exact pin in requirements/ci.txt is inside pyproject's ranges."""
    ci = _pins(ROOT / "requirements" / "ci.txt")
    project = PYPROJECT["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += [r for r in extra if not r.startswith("optax_lookahead")]
    for requirement in map(Requirement, declared):
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in ci, f"requirements/ci.txt does not pin {name}"
        assert requirement.specifier.contains(ci[name]), (requirement, ci[name])


@pytest.mark.slow
def test_flax_module_without_flax_says_how_to_install_it():
    """``import optax_lookahead.flax`` with no Flax names the extra to install."""
    code = (
        "import sys\n"
        "class NoFlax:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'flax' or name.startswith('flax.'):\n"
        "            raise ModuleNotFoundError(f'no {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoFlax())\n"
        "import optax_lookahead\n"  # the core package needs no Flax
        "import optax_lookahead.flax\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(("ImportError", "ModuleNotFoundError")), result.stderr
    assert "pip install" in last_line, result.stderr
    assert "optax_lookahead[flax]" in last_line, result.stderr
