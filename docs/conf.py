"""Sphinx configuration for the API reference and the guides.

Builds offline (no intersphinx, no remote theme) and is run with ``-W`` by
``tests/test_docs.py``, so any warning fails the build.

The guides are the README's own sections, so the README stays the one source
of each text: a page under ``guides/`` whose first line is
``% README: <heading> | <heading>`` is replaced, when Sphinx reads it, by the
README's level-2 sections whose headings start with those words, one heading
level up. A heading that matches no section fails the build.
"""

import re
from pathlib import Path

import optax_lookahead

ROOT = Path(__file__).resolve().parent.parent
README_MARKER = "% README:"

project = "optax_lookahead"
author = "optax_lookahead developers"
copyright = "optax_lookahead developers"
release = optax_lookahead.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

# Google-style docstrings, as in optax.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"

myst_heading_anchors = 3

html_theme = "alabaster"
html_title = "optax_lookahead"

# The README's links to BENCHMARKS.md, a page here too.
_LINKS = {"BENCHMARKS.md": "../benchmarks.md"}


def readme_sections() -> dict[str, str]:
    """The README's level-2 sections, heading text to Markdown, in order."""
    sections: dict[str, str] = {}
    heading, lines, fenced = None, [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            if heading is not None:
                sections[heading] = "\n".join(lines)
            heading, lines = line[3:].strip(), []
        # One level up: the section's own heading becomes the page title.
        if not fenced and re.match(r"^#{2,6} ", line):
            line = line[1:]
        lines.append(line)
    if heading is not None:
        sections[heading] = "\n".join(lines)
    return sections


def slug(heading: str) -> str:
    """A heading's anchor, as GitHub and myst_heading_anchors make it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def guide_sections(text: str) -> list[str]:
    """The README headings a guide page names on its marker line."""
    wanted = text.splitlines()[0][len(README_MARKER) :].split("|")
    sections = readme_sections()
    headings = []
    for prefix in (w.strip() for w in wanted):
        found = [h for h in sections if h.startswith(prefix)]
        if len(found) != 1:
            raise ValueError(
                f"docs: README heading {prefix!r} matches {found} "
                f"(headings: {list(sections)})"
            )
        headings.append(found[0])
    return headings


def guide_pages() -> dict[str, str]:
    """Anchor of each README section shown in a guide, to that guide's file."""
    pages = {}
    for page in (ROOT / "docs" / "guides").glob("*.md"):
        text = page.read_text()
        if text.startswith(README_MARKER):
            pages.update({slug(h): page.name for h in guide_sections(text)})
    return pages


def guide_from_readme(text: str) -> str:
    """The README sections a guide page names, with the README's links
    to other sections and files pointed at their pages here."""
    sections = readme_sections()
    body = "\n\n".join(sections[h] for h in guide_sections(text))
    for name, target in _LINKS.items():
        body = body.replace(f"]({name})", f"]({target})")
    for anchor, page in guide_pages().items():
        body = body.replace(f"](#{anchor})", f"]({page}#{anchor})")
    return body


def _on_source_read(app, docname, source):
    if source[0].startswith(README_MARKER):
        source[0] = guide_from_readme(source[0])


def setup(app):
    app.connect("source-read", _on_source_read)
