"""bench.tools.checkout: another revision beside this one, for `bench ingest --against`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.tools.checkout import checkout

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_a_revision_is_checked_out_beside_this_one_and_removed_after() -> None:
    head = _git("rev-parse", "HEAD")
    with checkout("HEAD", ROOT) as (path, commit):
        assert commit == head
        assert path != ROOT and (path / "pyproject.toml").is_file()
        # The revision's own files, not this working tree's.
        assert _git("-C", str(path), "rev-parse", "HEAD") == head
        assert str(path) in _git("worktree", "list")
    assert not path.exists()
    assert str(path) not in _git("worktree", "list")


def test_an_unknown_revision_is_refused_before_anything_is_made() -> None:
    before = _git("worktree", "list")
    with pytest.raises(subprocess.CalledProcessError), checkout("no-such-rev-" + "0" * 8, ROOT):
        pass
    assert _git("worktree", "list") == before
