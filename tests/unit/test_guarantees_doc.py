"""docs/guarantees.md names, for each promise, the tests that prove it. This fails when
a named test does not exist (renamed, deleted, or a typo), so the document cannot drift
away from the suite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "guarantees.md"
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]`]*\])?`")


def test_functions(path: Path) -> set[str]:
    """Names of test functions (module level or in Test* classes) defined in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
            "test"
        ):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(
                    item, (ast.FunctionDef, ast.AsyncFunctionDef)
                ) and item.name.startswith("test"):
                    names.add(item.name)
    return names


test_functions.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def named_tests() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in NAMED.finditer(DOC.read_text())]


def test_every_named_test_exists() -> None:
    named = named_tests()
    assert len(named) >= 10, "the document names too few tests; is the format still `path::name`?"
    missing = []
    cache: dict[str, set[str]] = {}
    for path, name in named:
        file = ROOT / path
        if not file.is_file():
            missing.append(f"{path}::{name} (no such file)")
            continue
        if path not in cache:
            cache[path] = test_functions(file)
        if name not in cache[path]:
            missing.append(f"{path}::{name}")
    assert not missing, "docs/guarantees.md names tests that do not exist:\n" + "\n".join(missing)


def test_every_promise_names_a_test() -> None:
    # Each promise is a "### " section; each must name at least one test.
    sections = re.split(r"^### ", DOC.read_text(), flags=re.M)[1:]
    assert sections
    bare = [s.splitlines()[0] for s in sections if not NAMED.search(s)]
    assert not bare, f"promises with no test named: {bare}"


def test_the_checker_catches_a_missing_test(tmp_path: Path) -> None:
    sample = tmp_path / "t.py"
    sample.write_text(
        "def test_a():\n    pass\nclass TestB:\n    async def test_c(self):\n        pass\n"
    )
    assert test_functions(sample) == {"test_a", "test_c"}
