"""Websocket endpoints, the ops figures for the console, and the two pages."""

from __future__ import annotations

import json
import logging
import random
import socket
from pathlib import Path

import msgspec
from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from services.common.limits import oversize
from services.common.redisconn import REDIS_AWAY
from services.common.settings import PushSettings
from services.common.tokens import bearer_token
from services.push import protocol
from services.push.admission import client_ip, device_of, precheck
from services.push.cycles import drop_heartbeat_link, drop_tracebacks
from services.push.hub import Client, Hub
from services.push.keys import HUB, KEYS, OPERATORS, OPS, REDIS, SETTINGS, VERIFY_TOKEN
from services.push.ops import read_viewers
from services.push.protocol import POLL_ID, Close

log = logging.getLogger("buzzer.push")

STATIC = Path(__file__).parent / "static"


def heartbeat_period(longest_s: float, draw: float | None = None) -> float:
    """One socket's ping period: between half of ``longest_s`` and ``longest_s``, drawn
    per socket (``draw`` in [0, 1), random by default).

    aiohttp pings each socket a fixed period after its last incoming bytes, so sockets
    that joined together (a show's start, a reconnect after a restart) would ping
    together for as long as they stay: in ``bench push``, 10,000 pings at once held back
    the broadcasts of that second to a delay-to-all of 221-258 ms, against 67-98 ms in
    the others. aiohttp still rounds each ping's time up to a whole second, which groups
    them by second (a tenth of the sockets each, at 20 s): measured, cheaper in CPU than
    with no rounding (57 % of the core against 64 %), and the groups do not show in the
    p99.
    """
    return longest_s * (1 + (random.random() if draw is None else draw)) / 2


async def poll_live(request: web.Request) -> web.WebSocketResponse:
    return await _serve(request, request.match_info["poll"])


async def live(request: web.Request) -> web.WebSocketResponse:
    return await _serve(request, None)


async def _serve(request: web.Request, poll: str | None) -> web.WebSocketResponse:
    settings = request.app[SETTINGS]
    ws = web.WebSocketResponse(
        heartbeat=heartbeat_period(settings.heartbeat_s),
        max_msg_size=settings.max_message_bytes,
        compress=False,
        timeout=settings.close_timeout_s,
    )
    try:
        return await _handle(request, ws, poll)
    finally:
        # A kicked socket's close may still be under way (hub.py drops its tracebacks).
        drop_heartbeat_link(request)
        drop_tracebacks(ws)


async def _handle(
    request: web.Request, ws: web.WebSocketResponse, poll: str | None
) -> web.WebSocketResponse:
    settings = request.app[SETTINGS]
    hub = request.app[HUB]
    ip = client_ip(request, settings.trusted_proxies)
    verify = request.app.get(VERIFY_TOKEN)
    reject = precheck(request, settings, verify)
    device = device_of(request, verify) if reject is None else None
    since: int | None = None
    if reject is None and poll is not None:
        try:
            raw = request.query.get("since_version")
            since = int(raw) if raw else None
        except ValueError:
            reject = Close.POLICY_VIOLATION, "since_version must be an integer"
    admitted = False
    if reject is None:
        reject = hub.admission.admit(ip, device)
        admitted = reject is None
    try:
        await ws.prepare(request)
    except BaseException:
        if admitted:
            hub.admission.release(ip, device)
        raise
    if reject is not None:
        # Upgrade first, then close: a browser sees a close code, never an HTTP status.
        code, reason = reject
        log.info("websocket refused", extra={"ip": ip, "code": int(code), "reason": reason})
        await ws.close(code=code, message=reason.encode())
        return ws
    transport = request.transport
    assert transport is not None
    if settings.socket_sndbuf_bytes:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.socket_sndbuf_bytes)
    client = hub.register(ws, transport, ip)
    try:
        if poll is None or await _subscribe(
            hub, client, ws, poll, since, max_subs=settings.max_subscriptions, strict=True
        ):
            await _receive(hub, client, ws, settings)
    except REDIS_AWAY as exc:
        log.warning("live state unavailable", extra={"error": str(exc)})
        await _close(
            hub, client, ws, Close.TRY_AGAIN_LATER, "live state unavailable, try again later"
        )
    except Exception:
        log.exception("websocket handler failed", extra={"ip": ip})
        await _close(hub, client, ws, Close.INTERNAL_ERROR, "internal error")
    finally:
        hub.unregister(client)
        hub.admission.release(ip, device)
    return ws


async def _close(
    hub: Hub, client: Client, ws: web.WebSocketResponse, code: Close, reason: str
) -> None:
    if client.closing or ws.closed:
        return
    hub.stats.disconnects[code.name] = hub.stats.disconnects.get(code.name, 0) + 1
    hub.unregister(client)
    await ws.close(code=code, message=reason.encode()[:123])


async def _subscribe(
    hub: Hub,
    client: Client,
    ws: web.WebSocketResponse,
    poll: str,
    since: int | None,
    *,
    max_subs: int,
    strict: bool,
) -> bool:
    """Subscribe and answer; False if the socket was closed because of it."""
    if not POLL_ID.match(poll):
        await _close(hub, client, ws, Close.POLICY_VIOLATION, "invalid poll id")
        return False
    if poll not in client.subs and len(client.subs) >= max_subs:
        await _close(
            hub, client, ws, Close.POLICY_VIOLATION, "too many subscriptions on one socket"
        )
        return False
    snap = await hub.snapshot(poll)
    if client.closing:
        return False
    if snap is None:
        if strict:
            await _close(hub, client, ws, Close.UNKNOWN_POLL, f"unknown poll {poll}")
            return False
        client.send(protocol.Error(code="unknown_poll", message=f"no poll {poll!r}", poll=poll))
        return True
    hub.detach(client, poll)
    hub.attach(client, poll, since, snap)
    return True


async def _receive(
    hub: Hub, client: Client, ws: web.WebSocketResponse, settings: PushSettings
) -> None:
    async for msg in ws:
        if client.closing:
            break
        if msg.type is WSMsgType.TEXT:
            if not hub.allow_message(client, settings.client_messages_per_s):
                await _close(hub, client, ws, Close.POLICY_VIOLATION, "too many messages")
                return
            try:
                m = protocol.client_decoder.decode(msg.data)
            except msgspec.ValidationError as exc:
                await _close(hub, client, ws, Close.POLICY_VIOLATION, f"invalid message: {exc}")
                return
            except msgspec.DecodeError:
                await _close(hub, client, ws, Close.INVALID_PAYLOAD, "message is not JSON")
                return
            if isinstance(m, protocol.Subscribe):
                if not await _subscribe(
                    hub,
                    client,
                    ws,
                    m.poll,
                    m.since_version,
                    max_subs=settings.max_subscriptions,
                    strict=False,
                ):
                    return
            elif isinstance(m, protocol.Unsubscribe):
                hub.detach(client, m.poll)
            else:
                client.send(protocol.Pong())
        elif msg.type is WSMsgType.BINARY:
            await _close(hub, client, ws, Close.UNSUPPORTED_DATA, "binary frames are not supported")
            return
        else:
            return


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Ends with a newline, like ingest's answers: a shell prompt after curl stays on its line.
    return web.json_response(
        data, status=status, headers=headers, dumps=lambda o: json.dumps(o) + "\n"
    )


async def ops(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is None or request.app[OPERATORS].operator(token) is None:
        return _json(
            {"error": "unauthorized", "field": None, "message": "admin token required"}, status=401
        )
    app = request.app
    figures = await app[OPS].read()
    hub = app[HUB]
    figures["viewers"] = await read_viewers(app[REDIS], app[KEYS], settings.viewers_interval_s)
    figures["viewers_here"] = len(hub.clients)
    figures["instance"] = settings.instance_id
    return _json(figures, headers={"Cache-Control": "no-store"})


async def config(request: web.Request) -> web.Response:
    return _json({"api_base": request.app[SETTINGS].admin_api_base})


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC / name)


async def results_page(_: web.Request) -> web.FileResponse:
    return _page("results.html")


async def console_page(_: web.Request) -> web.FileResponse:
    return _page("console.html")


@web.middleware
async def page_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    refused = oversize(request, log)
    if refused is not None:
        # The same JSON 414/431 as the vote API: before any upgrade, so a websocket
        # client sees the HTTP status.
        response: web.StreamResponse = _json(
            {"error": refused.error, "field": refused.field, "message": refused.message},
            status=refused.status,
        )
    else:
        response = await handler(request)
    if not isinstance(response, web.WebSocketResponse):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; connect-src 'self' ws: wss: http: https:; "
            "img-src 'self' data:; frame-ancestors 'none'",
        )
    return response
