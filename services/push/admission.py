"""Who may open a websocket: the origin and token checks on the upgrade request, and the
connection slots per process and per address.

Refusals are answered after the upgrade with a close code (:class:`Close`), never an
HTTP status, so a browser's page can tell the viewer why.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

from services.common.settings import PushSettings
from services.push.protocol import Close

Refusal = tuple[Close, str]


def client_ip(request: web.Request, trusted_proxies: list[str]) -> str:
    peer = request.remote or ""
    if peer in trusted_proxies:
        # Only the hop our own proxy appended is trustworthy; earlier ones are the client's word.
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return peer


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    # Reject cross-site websocket hijacking: a browser always sends Origin, and only
    # pages from our own host (or configured origins) may read live state with the
    # viewer's cookies/credentials. Native apps send no Origin.
    origin = request.headers.get("Origin")
    if origin is None or "*" in allowed or origin in allowed:
        return True
    return urlsplit(origin).netloc == request.headers.get("Host", "")


def request_token(request: web.Request) -> str | None:
    # Browsers cannot set headers on a websocket, hence the query parameter.
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return request.query.get("token")


def device_of(request: web.Request, verify: Callable[[str], str] | None) -> str | None:
    """The device id of the socket's token if it has a valid one, else None."""
    token = request_token(request)
    if not token or verify is None:
        return None
    try:
        return verify(token)
    except Exception:  # the verifier's own error type; a bad token is simply no device
        return None


def precheck(
    request: web.Request, settings: PushSettings, verify: Callable[[str], object] | None
) -> Refusal | None:
    """The checks on the upgrade request itself: origin, then the device token if required.

    :param verify: the device-token check (raises on a bad token); needed when
        ``settings.require_token``
    """
    if not origin_allowed(request, settings.allowed_origins):
        return Close.FORBIDDEN_ORIGIN, "origin not allowed"
    if settings.require_token:
        token = request_token(request)
        if not token:
            return Close.UNAUTHORIZED, "device token required"
        if verify is None:
            return Close.UNAUTHORIZED, "device tokens cannot be checked here"
        try:
            verify(token)
        except Exception as exc:  # the verifier's own error type; any failure is a refusal
            return Close.UNAUTHORIZED, f"invalid token: {exc}"[:120]
    return None


class Admission:
    """Connection slots: at most ``max_connections`` in this process; a socket opened
    with a valid device token counts against its device (``max_per_device``), any other
    against its source address (``max_per_ip``). Counted from admission (before the
    upgrade finishes), so a burst of handshakes cannot overshoot a bound.

    Devices rather than addresses where possible: behind carrier-grade NAT thousands of
    phones share one address, and a per-address bound low enough to stop one abuser
    would turn them away. An unverified token proves nothing, so it counts per address.

    Every :meth:`admit` that returned ``None`` must be paired with one :meth:`release`
    with the same arguments.
    """

    def __init__(self, max_connections: int, max_per_ip: int, max_per_device: int = 5) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.max_per_device = max_per_device
        self.accepting = True
        self.reserved = 0
        self.per_ip: dict[str, int] = {}
        self.per_device: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        """Refusals by close code name, for the metrics."""

    def admit(self, ip: str, device: str | None = None) -> Refusal | None:
        """Reserve a connection slot, or say why not (the caller closes with it).

        :param device: the device id of a verified device token, if the socket has one
        """
        if not self.accepting:
            return self._reject(Close.GOING_AWAY, "server shutting down")
        if self.reserved >= self.max_connections:
            return self._reject(Close.TRY_AGAIN_LATER, "server full, try again later")
        counts, key, limit = self._bucket(ip, device)
        n = counts.get(key, 0)
        if n >= limit:
            reason = "this device" if device is not None else "this address"
            return self._reject(Close.TOO_MANY_FROM_ADDRESS, f"too many connections from {reason}")
        counts[key] = n + 1
        self.reserved += 1
        return None

    def _bucket(self, ip: str, device: str | None) -> tuple[dict[str, int], str, int]:
        if device is not None:
            return self.per_device, device, self.max_per_device
        return self.per_ip, ip, self.max_per_ip

    def _reject(self, code: Close, reason: str) -> Refusal:
        self.rejected[code.name] = self.rejected.get(code.name, 0) + 1
        return code, reason

    def release(self, ip: str, device: str | None = None) -> None:
        self.reserved -= 1
        counts, key, _ = self._bucket(ip, device)
        n = counts.get(key, 1) - 1
        if n > 0:
            counts[key] = n
        else:
            counts.pop(key, None)
