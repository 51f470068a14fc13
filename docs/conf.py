"""Sphinx configuration of the Flask-SessionExt documentation."""

import importlib.metadata
import sys
from pathlib import Path

# The local extension: the signal catalog and the benchmark table, generated.
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

# Project --------------------------------------------------------------

project = "Flask-SessionExt"
# As in LICENSE; the footer shows it.
copyright = "2026, Flask-SessionExt contributors"
release = importlib.metadata.version("Flask-SessionExt")
version = release.partition(".dev")[0]

# General --------------------------------------------------------------

default_role = "code"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "pallets_sphinx_themes",
    "sessionext_docs",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
exclude_patterns = ["_build", "_inventories"]

# Builds run without network: the inventories are in the repository (see
# _inventories/README.rst for how they were made), each with the address of
# the documentation it describes.
intersphinx_mapping = {
    name: (url, f"_inventories/{name}.inv")
    for name, url in {
        "flask": "https://flask.palletsprojects.com/en/stable/",
        "sqlalchemy": "https://docs.sqlalchemy.org/en/20/",
        "blinker": "https://blinker.readthedocs.io/en/stable/",
    }.items()
}

# HTML -----------------------------------------------------------------

html_theme = "flask"
html_theme_options = {"index_sidebar_logo": False}
html_sidebars = {
    "index": ["project.html", "localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
html_title = f"Flask-SessionExt Documentation ({version})"
html_show_sourcelink = False
html_static_path = ["_static"]
html_css_files = ["sessionext.css"]
# The banner script would ask PyPI for the latest version from each page.
version_banner = False
