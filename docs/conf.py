"""Sphinx configuration for flask-oa-recall's documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` after
``pip install -e '.[docs]'``; ``-b doctest`` runs the code samples.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as distribution_version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

# -- Project -------------------------------------------------------------------------------------

project = "flask-oa-recall"
author = "flask-oa-recall maintainers"
copyright = "flask-oa-recall maintainers"
release = distribution_version("flask-oa-recall")
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "myst_parser",
    "pallets_sphinx_themes",
    "oa_recall_docs",
]
root_doc = "index"
exclude_patterns = ["_build"]
# No intersphinx: the documentation builds offline, and -W turns a failed inventory fetch into
# an error.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
myst_enable_extensions = ["colon_fence"]
# CHANGES.md uses "##" headings under a "#" one; MyST warns about nothing else there.
suppress_warnings = ["myst.header"]

# -- HTML ----------------------------------------------------------------------------------------

html_theme = "flask"
html_theme_options = {"index_sidebar_logo": False}
html_sidebars = {
    "index": ["project.html", "localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
singlehtml_sidebars = {"index": ["project.html", "localtoc.html"]}
html_title = f"flask-oa-recall documentation ({version})"
html_show_sourcelink = False

# -- Doctest -------------------------------------------------------------------------------------

# The samples run in a scratch folder, so an app's instance folder (its SQLite store) never lands
# in the source tree.
doctest_global_setup = """
import os, tempfile
os.chdir(tempfile.mkdtemp(prefix="oa-recall-doctest-"))
"""
