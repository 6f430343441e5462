"""mypy is clean on the package, which ships ``py.typed``.

The configuration (which files, how strict, optax as untyped) is in
``pyproject.toml`` under ``[tool.mypy]``, so ``python -m mypy`` from the
repository root checks the same thing by hand.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_package_ships_its_type_marker():
    assert (ROOT / "optax_lookahead" / "py.typed").is_file()


@pytest.mark.slow
def test_mypy_is_clean_on_the_package(tmp_path):
    command = [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
