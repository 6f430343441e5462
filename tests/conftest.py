"""Shared test setup: JAX's strictest numeric settings, and helpers.

Every test in this folder runs with ``jax_numpy_dtype_promotion="strict"`` and
``jax_numpy_rank_promotion="raise"``, so an implicit promotion in the library
fails a test. optax itself is not clean under strict promotion (``optax.adam``
raises on ``float ** int32``), so the tests wrap such inner optimizers with
``tests.helpers.standard_promotion``: their own code runs with the default
rules while ours stays strict.
"""

import os
import pathlib
import subprocess
import sys

import jax
import pytest
from hypothesis import settings

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Derandomized: CI sees the same examples on every run, so a failure is
# reproducible and a green run is not luck. No example database on disk.
# OPTAX_LOOKAHEAD_HYPOTHESIS=stress draws ten times as many random examples.
settings.register_profile(
    "deterministic", derandomize=True, database=None, deadline=None, max_examples=30
)
settings.register_profile("stress", database=None, deadline=None, max_examples=300)
settings.load_profile(os.environ.get("OPTAX_LOOKAHEAD_HYPOTHESIS", "deterministic"))


@pytest.fixture(params=["cond", "select"])
def sync_staging(request):
    """Each way lookahead can stage out its sync, for ``sync_staging=``.

    The library picks one per platform (a lax.cond on CPU, a select elsewhere);
    both must give the same results, so tests that use this fixture run both
    here on the CPU.
    """
    return request.param


@pytest.fixture(scope="session")
def built_dist(tmp_path_factory):
    """The wheel and the sdist of this checkout, built once per test session.

    ``python -m build`` (from the ``test`` extra) without build isolation, so
    no network is needed. Used by tests/test_packaging.py, which checks what
    they hold, and tests/test_notebooks.py, which installs the wheel.
    """
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out)]
    result = subprocess.run(
        [*command, str(ROOT)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


@pytest.fixture(autouse=True)
def _strict_numerics():
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield
