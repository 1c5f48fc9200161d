"""A JSON call to the Buzzer API with the standard library only: for the CLI tools and
the locust processes (which must not import asyncio clients)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


def api(
    method: str, url: str, token: str | None = None, body: Any = None, timeout: float = 10
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())
