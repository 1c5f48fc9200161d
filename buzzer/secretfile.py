"""Files that hold a secret (tokens, HMAC secrets, private keys): owner-only from the start.

Stdlib only: the load test's locust processes may import it next to gevent.
"""

from __future__ import annotations

import os
from pathlib import Path

MODE = 0o600


def write_secret(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path``, readable by its owner only, replacing it atomically.

    The bytes go to a new file opened with mode 600 and are then renamed over ``path``:
    a chmod after ``write_text`` leaves a moment in which the secret is world-readable,
    and ``os.open(path, O_CREAT, 0o600)`` keeps the old mode of a file that already
    exists (e.g. one written by an earlier version with 644).
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
