"""Sphinx configuration for the redisca documentation.

Build: python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

import configparser
import sys
from pathlib import Path

# Document the source tree next to this folder, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_setup_cfg = configparser.ConfigParser()
_setup_cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg", encoding="utf-8")

project = "redisca"
author = "the redisca authors"
copyright = "the redisca authors"
release = _setup_cfg["metadata"]["version"]  # one source of truth: setup.cfg
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = True
autodoc_typehints = "none"  # signatures stay readable; types live in the code (py.typed)
highlight_language = "python3"

html_theme = "alabaster"
html_title = f"redisca {release}"
