"""Sphinx configuration of the gatekit documentation.

Build (from the repository root; warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The build works offline.  Links into the PyTorch and Python documentation (intersphinx)
come from small inventories written at build time (``_ext/offline_inventory.py``) that
hold the names these pages use; ``GATEKIT_DOCS_INTERSPHINX=1`` uses the full inventories
from docs.pytorch.org and docs.python.org instead (network needed: an unreachable
inventory is a warning, so an error under ``-W``).  A name in neither renders as plain
code, not as an error.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

from offline_inventory import PYTHON_URL, TORCH_URL, write_inventories  # noqa: E402

import gatekit  # noqa: E402  (after the path set-up, like every Sphinx conf)

project = "gatekit"
author = "gatekit contributors"
copyright = "gatekit contributors"
release = gatekit.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "gatekit_docs",
]

exclude_patterns = ["_build", "_scripts", "_ext", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
root_doc = "index"

# --- autodoc -------------------------------------------------------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False  # nn.Module's own docstrings are not gatekit's
# Docstrings are NumPy/Google-free reST with doctest blocks; napoleon only reads
# "Args:"/"Returns:" sections where a module uses them.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autosummary_generate = False  # tables only; the entries come from the gatekit-api directive

# --- intersphinx: offline by default, full inventories on request -------------------------
if os.environ.get("GATEKIT_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {"python": (PYTHON_URL, None), "torch": (TORCH_URL, None)}
else:
    intersphinx_mapping = write_inventories(Path(tempfile.mkdtemp(prefix="gatekit-docs-inv-")))
intersphinx_timeout = 10

# --- HTML ----------------------------------------------------------------------------
html_theme = "furo"
html_title = f"gatekit {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
# Quotes and ellipses only: "--flag" must stay two hyphens, not become an en dash.
smartquotes_action = "qe"
pygments_style = "friendly"
pygments_dark_style = "monokai"
