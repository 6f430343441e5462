"""The API reference site builds offline, warning-free, and covers every name."""

import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import optax_lookahead
import optax_lookahead.flax

ROOT = Path(__file__).resolve().parent.parent


def documented_python_names(objects_inv: Path) -> set[str]:
    """The Python objects a Sphinx inventory (``objects.inv``, version 2) lists."""
    raw = objects_inv.read_bytes()
    header_end = 0
    for _ in range(4):  # four plain-text header lines, then zlib
        header_end = raw.index(b"\n", header_end) + 1
    body = zlib.decompress(raw[header_end:]).decode()
    names = set()
    for line in body.splitlines():
        name, domain_role = line.split(" ", 2)[:2]
        if domain_role.startswith("py:"):
            names.add(name)
    return names


@pytest.mark.slow
def test_docs_build_offline_without_warnings_and_document_every_public_name(
    tmp_path,
):
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    command += ["-q", "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    documented = documented_python_names(out / "objects.inv")
    public = {f"optax_lookahead.{n}" for n in optax_lookahead.__all__}
    public |= {f"optax_lookahead.flax.{n}" for n in optax_lookahead.flax.__all__}
    missing = sorted(public - documented)
    assert not missing, f"add these to docs/api.rst: {missing}"


def test_flax_module_declares_its_public_names():
    assert sorted(optax_lookahead.flax.__all__) == [
        "LookaheadTrainState",
        "SparseEmbed",
        "slow_model",
        "slow_train_state",
        "sparse_embed_grads",
    ]


def test_every_public_function_has_a_runnable_example():
    """Each public function's docstring holds a doctest, which pytest runs."""
    import inspect

    missing = [
        f"{module.__name__}.{name}"
        for module in (optax_lookahead, optax_lookahead.flax)
        for name in module.__all__
        if inspect.isfunction(getattr(module, name))
        and ">>>" not in (getattr(module, name).__doc__ or "")
    ]
    assert not missing, f"no '>>>' example in the docstrings of {missing}"


def test_every_readme_guide_section_is_a_docs_page():
    """A new README section shows up on the site, or is listed here as not."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_conf", ROOT / "docs/conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    # Sections about the repository, not the library.
    not_guides = (
        "The two commands",
        "How the code is organised",
        "More",
        "Development",
    )
    shown = []
    for page in (ROOT / "docs" / "guides").glob("*.md"):
        first_line = page.read_text().splitlines()[0]
        assert first_line.startswith(conf.README_MARKER), page
        shown += [p.strip() for p in first_line.split(":", 1)[1].split("|")]
    unshown = [
        heading
        for heading in conf.readme_sections()
        if not heading.startswith(not_guides)
        and not any(heading.startswith(prefix) for prefix in shown)
    ]
    assert not unshown, f"add a page under docs/guides/ for {unshown}"
