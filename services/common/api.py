"""Bodies of the public API, typed and validated by msgspec.

No aiohttp here: the load tests and any other client build their bodies from these
types, so a request they send is one the API accepts by construction.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec

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


class VoteStatus(msgspec.Struct, frozen=True):
    """Was my vote counted? Answered only to the device that cast it."""

    vote_id: str
    poll: str
    accepted: bool
    archived: bool
    """In PostgreSQL's vote archive, which the recount of the poll reads."""
    option: str
    count: int
    received_at: int | None = None
    """Ingest's clock when the vote arrived, ms since the epoch (known once archived)."""


class DeviceIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/devices``: empty for an anonymous device, or the viewer's sign-in."""

    id_token: Annotated[str, msgspec.Meta(min_length=1, max_length=3500)] | None = None
    """An OpenID Connect ID token of one of the deployment's issuers."""
    nonce: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    """The nonce the app put in its sign-in request; the ID token must carry it."""
    platform: Annotated[str, msgspec.Meta(min_length=1, max_length=16)] | None = None
    """``ios``, ``android``...: which attestation verifier reads ``attestation``."""
    key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    """The attested key's id (App Attest) or the install's id (Play Integrity)."""
    attestation: Annotated[str, msgspec.Meta(min_length=1, max_length=12_000)] | None = None
    """The platform's evidence, base64: an App Attest attestation object, or a Play
    Integrity token's bytes; its challenge is ``nonce``."""


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
    max_votes_per_account: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Votes one viewer account may cast over all its devices (1: one vote per viewer);
    null: no account limit. Needs device tokens bound to an account (docs/guarantees.md)."""
    id: Slug | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    error: str
    """Stable machine-readable code, e.g. ``invalid_field``, ``poll_not_open``."""
    message: str
    field: str | None = None
