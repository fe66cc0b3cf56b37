"""The docs name tests as proof (the Guarantees page above all): every name must exist.

A renamed or deleted test would otherwise leave a guarantee that points at nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
REFERENCE = re.compile(r"tests/(test_\w+\.py)::(\w+)")


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def references() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for match in REFERENCE.finditer(page.read_text(encoding="utf-8")):
            found.append((page.name, match.group(1), match.group(2)))
    return found


def test_the_guarantees_page_names_its_proofs() -> None:
    named = [ref for ref in references() if ref[0] == "guarantees.rst"]
    assert len(named) >= 10


@pytest.mark.parametrize(("page", "module", "function"), references())
def test_named_test_exists(page: str, module: str, function: str) -> None:
    path = ROOT / "tests" / module
    assert path.is_file(), f"{page} names {module}, which does not exist"
    assert function in defined_functions(path), f"{page} names {module}::{function}, not defined"
