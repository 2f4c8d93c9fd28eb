"""Sphinx configuration of textenv's documentation: Markdown pages (MyST), the API reference from the
docstrings (autodoc + napoleon), the furo theme.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]  # the packages of this checkout, and repo_links

project = "textenv"
author = "the textenv authors"
copyright = "2026, the textenv authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "repo_links",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Headings get GitHub's anchors, so one #anchor works on GitHub and in the built site; a link to a missing
# page, file or #anchor is a myst.xref_missing warning, an error under -W.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Only our own docstrings: an undocumented override (an env's step) does not pull in gymnasium's or SB3's.
autodoc_inherit_docstrings = False
# Optional heavy packages that the bench/dev extras add; the API pages build without them.
autodoc_mock_imports = ["trl", "playwright", "matplotlib"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Links from a page to a repository file outside docs/ (benchmarks/results/...): checked to exist (a missing
# one fails the build), then pointed at ``repo_links_url/<path>``; empty: the file in this checkout, relative
# to the built page. Set it to e.g. "https://github.com/<owner>/textenv/blob/main" for a published site.
repo_links_url = ""

html_theme = "furo"
html_title = "textenv"
