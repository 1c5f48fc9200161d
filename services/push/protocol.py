"""The websocket protocol between push and its clients: messages and close codes.

``docs/live-protocol.md`` is the developer-facing description; keep them in step.
"""

from __future__ import annotations

import re
from enum import IntEnum

import msgspec

from services.common.messages import OptionDef, TallyUpdate

POLL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Close(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    """Server shutdown or restart: reconnect (with backoff), resume with the last version."""
    UNSUPPORTED_DATA = 1003
    """A binary frame: the protocol is JSON text only."""
    INVALID_PAYLOAD = 1007
    """A text frame that is not JSON."""
    POLICY_VIOLATION = 1008
    """Valid JSON that breaks the protocol: unknown type, bad field, too many subscriptions
    or messages."""
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    """This process is full: reconnect with backoff (the load balancer may pick another)."""
    IDLE = 4000
    """The socket followed no poll for the idle timeout."""
    UNAUTHORIZED = 4001
    """A device token is required here and was missing or invalid: get a new token first."""
    FORBIDDEN_ORIGIN = 4003
    """The page's Origin is not allowed: do not retry."""
    UNKNOWN_POLL = 4004
    """``/v1/polls/{poll}/live`` for a poll that does not exist: do not retry."""
    TOO_SLOW = 4008
    """The client did not read its updates for too long: reconnect, resume with last version."""
    TOO_MANY_FROM_ADDRESS = 4029
    """Connection limit per source address reached: retry with a long backoff."""


class Subscribe(msgspec.Struct, frozen=True, tag="subscribe", forbid_unknown_fields=True):
    poll: str
    since_version: int | None = None


class Unsubscribe(msgspec.Struct, frozen=True, tag="unsubscribe", forbid_unknown_fields=True):
    poll: str


class Ping(msgspec.Struct, frozen=True, tag="ping", forbid_unknown_fields=True):
    """An application-level ping, for browsers (they cannot send websocket pings)."""


ClientMessage = Subscribe | Unsubscribe | Ping

client_decoder = msgspec.json.Decoder(ClientMessage)


class Snapshot(TallyUpdate, frozen=True, kw_only=True):
    """A poll's full state as the answer to a subscribe, with what a page needs to draw it."""

    title: str
    options: list[OptionDef]


class UpToDate(msgspec.Struct, frozen=True, tag_field="type", tag="uptodate"):
    """Answer to a subscribe whose ``since_version`` is already current: nothing older follows."""

    poll: str
    version: int


class Error(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    code: str
    message: str
    poll: str | None = None


class Pong(msgspec.Struct, frozen=True, tag_field="type", tag="pong"):
    pass


encoder = msgspec.json.Encoder()
