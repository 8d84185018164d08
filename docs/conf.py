"""Sphinx configuration: MyST Markdown pages, autodoc + napoleon for the API, and the generated references of
``_ext/resdense_docs.py`` (recipe schema from resdense.config, CLI from resdense.cli). ``make docs`` builds it with
warnings as errors."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

from resdense.version import VERSION  # noqa: E402

project = "resdense"
author = "the resdense authors"
copyright = "the resdense authors, MIT license"
version = release = VERSION

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "resdense_docs",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Theme: furo when installed (the docs extra), else Sphinx's default.
try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:
    html_theme = "alabaster"
html_title = f"resdense {VERSION}"

# API reference
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

# -n: every cross-reference must resolve. References into resdense must (a broken one fails the build); types from
# torch, numpy and the standard library are not linked (no inventories are downloaded at build time).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(?!resdense\b).*"),
    (r"py:.*", r"resdense\..*\.(T|E|_\w+)"),  # type variables and private names in signatures
]

# The modules of the API reference: each public class and function in them needs a docstring (else a warning).
resdense_public_modules = [  # and their submodules
    "resdense.backbones", "resdense.heads", "resdense.data", "resdense.evaluation", "resdense.coco",
    "resdense.engine", "resdense.inference", "resdense.export", "resdense.config", "resdense.registry",
    "resdense.hardware", "resdense.errors", "resdense.visualize", "resdense.api", "resdense.files",
    "resdense.optional", "resdense.recipes", "resdense.typecheck",
]
