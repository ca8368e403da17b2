"""Sphinx configuration: MyST Markdown pages, the furo theme, the CLI reference from the argparse parser and
the Python API from the docstrings. Built with warnings as errors by .ci/run."""

project = "ffdistill"
author = "the ffdistill developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinxarg.ext"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
html_theme = "furo"
html_title = "ffdistill"
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures carry them; resolving every forward reference is noise
autodoc_default_options = {"members": True, "undoc-members": False}
suppress_warnings = ["myst.header"]
nitpicky = False
