"""Another revision of this repository, checked out beside it for a bench to run.

``buzzer bench ingest --against REV`` serves the vote endpoint from that checkout and
from this one in alternating rounds of one run: the speed-up of a change is then a
ratio measured on the same machine at the same time, not two runs of a noisy machine
compared across minutes or days.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@contextlib.contextmanager
def checkout(rev: str, repo: Path | None = None) -> Iterator[tuple[Path, str]]:
    """A detached worktree of ``rev`` (any git revision: a commit, ``HEAD~1``, a
    branch) and the commit it resolved to; removed afterwards."""
    root = Path(_git("rev-parse", "--show-toplevel", cwd=repo))
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=root)
    tmp = Path(tempfile.mkdtemp(prefix="buzzer-against-"))
    path = tmp / "checkout"
    _git("worktree", "add", "--detach", "--quiet", str(path), commit, cwd=root)
    try:
        yield path, commit
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=root, capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True)
