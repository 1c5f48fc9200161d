"""The JSON the benches write, as strict JSON: the one object each prints last, and the
profiles the planner reads.

Python's ``json`` writes ``Infinity`` and ``NaN`` for non-finite floats, which no
strict parser reads (``jq``, a browser, a dashboard): a bench whose histogram quantile
fell in the ``+Inf`` bucket printed a last line the tools around it could not parse.
Non-finite figures become ``null``; a bench that can say more names it in a field of
its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float, at any depth, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON (RFC 8259) of ``obj``; ``kwargs`` as for :func:`json.dumps`."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def out_path(text: str) -> Path | None:
    """An ``--out`` argument: the profile's path, or None for '' (write none).
    ``Path('')`` is ``Path('.')``, a directory, so an empty argument needs this type."""
    return Path(text) if text else None
