"""Request and response bodies of the public API, typed and validated by msgspec."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, TypeVar

import msgspec
from aiohttp import web

from gateway.errors import ApiError

Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
"""Option keys and ids: safe in Redis keys, URLs and the tally's JSON."""

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
"""Names, titles and labels: any text PostgreSQL can store (no NUL character)."""


class VoteRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    option: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    vote_id: uuid.UUID
    """Made by the app, once per vote; a retry sends the same one."""
    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    client_ts: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """The app's clock when the vote was cast, ms since the epoch."""


class VoteAccepted(msgspec.Struct, frozen=True):
    vote_id: str
    accepted: int


class DeviceIssued(msgspec.Struct, frozen=True):
    device_id: str
    token: str
    expires_at: int


class OptionIn(msgspec.Struct, frozen=True):
    key: Slug
    label: Text


class ShowIn(msgspec.Struct, frozen=True):
    name: Text
    id: Slug | None = None


class PollIn(msgspec.Struct, frozen=True):
    show_id: Slug
    title: Text
    options: Annotated[list[OptionIn], msgspec.Meta(min_length=2, max_length=64)]
    max_votes_per_device: Annotated[int, msgspec.Meta(ge=1)] | None = 1
    """1 for a classic vote; null for buzz and clap (unlimited, rate-limited)."""
    max_count: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    """Largest tap count one request may carry (the app batches taps); 1: no batching."""
    id: Slug | None = None


T = TypeVar("T")

_FIELD = re.compile(r"at `\$\.([^`]+)`")


def field_of(exc: msgspec.ValidationError) -> str | None:
    m = _FIELD.search(str(exc))
    if m:
        return m.group(1)
    m = re.search(r"required field `([A-Za-z0-9_]+)`", str(exc))
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
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_field", str(exc), field=field_of(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {exc}", field="body") from exc


async def read_body(request: web.Request, kind: type[T]) -> T:
    raw = await request.read()
    return decode_body(raw, request.content_type, kind)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(obj), status=status, content_type="application/json", headers=headers
    )
