"""Bodies in and out of aiohttp: decoding into the types of ``services.common.api``, with the
4xx that names the field, and JSON responses."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from services.common.observability import SERVER_HEADER
from services.ingest.gateway.errors import ApiError

T = TypeVar("T")

_FIELD = re.compile(r"at `\$\.([^`]+)`")


def field_of(exc: msgspec.ValidationError) -> str | None:
    m = _FIELD.search(str(exc))
    if m:
        return m.group(1)
    m = re.search(r"(?:required|unknown) field `([A-Za-z0-9_]+)`", str(exc))
    return m.group(1) if m else None


def decode_body(raw: bytes, content_type: str, kind: type[T]) -> T:
    """Decode a JSON request body, or raise the 4xx that says what is wrong."""
    if content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, not {content_type or 'missing'}",
            field="Content-Type",
        )
    if not raw.strip():
        # msgspec would say "Input data was truncated", which reads like a network fault.
        raise ApiError(400, "empty_body", "empty body: send a JSON object", field="body")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_field", str(exc), field=field_of(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"body is not valid JSON: {exc}", field="body"
        ) from exc


def body_now(request: web.Request, max_size: int) -> bytes | None:
    """The whole body when it arrived with the headers, as a vote's nearly always does,
    read without a coroutine (``request.read()`` awaits the payload twice even then: a
    few µs of a vote's budget); None when it has not all arrived: await
    ``request.read()``. Over ``max_size``: the same 413 ``request.read()`` raises."""
    content = request.content
    if not content.is_eof():
        return None
    raw = content.read_nowait()
    if len(raw) > max_size:
        raise web.HTTPRequestEntityTooLarge(max_size, len(raw))
    return raw


async def read_body(request: web.Request, kind: type[T]) -> T:
    raw = await request.read()
    return decode_body(raw, request.content_type, kind)


SECURITY_HEADERS = {
    "Server": SERVER_HEADER,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
"""On every answer of the API (the edge, gateway/edge.py, adds them to answers made elsewhere)."""

_JSON_HEADERS = CIMultiDict({"Content-Type": "application/json", **SECURITY_HEADERS})


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # The newline keeps a shell prompt after `curl` on a line of its own. The headers
    # are built once: a 202 is the hottest answer of the system.
    if headers:
        all_headers = _JSON_HEADERS.copy()
        all_headers.update(headers)
    else:
        all_headers = _JSON_HEADERS
    return web.Response(body=msgspec.json.encode(obj) + b"\n", status=status, headers=all_headers)
