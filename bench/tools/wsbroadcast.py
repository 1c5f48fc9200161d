"""A cheap websocket backend for ``buzzer bench lb --only websockets``: it holds every
websocket it accepts and, while broadcasting, pushes one small text frame to all of them
``--rate`` times a second, so that updates flow through the HAProxy in front of it.

    python -m bench.tools.wsbroadcast --port 9000 --port 9001 --rate 10

A bare asyncio protocol, not aiohttp: the push side here stands in for a fleet of push
processes, so its own cost per socket must stay well below HAProxy's. It also answers
``GET /readyz`` (the generated config's health check). SIGUSR1 starts broadcasting,
SIGUSR2 stops it; every second it prints one JSON line: held sockets and frames written.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import resource
import signal
import struct
import time
from collections.abc import Sequence
from typing import cast

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def server_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    return struct.pack("!BBH", 0x81, 126, n) + payload


class Hub:
    def __init__(self) -> None:
        self.sockets: set[asyncio.Transport] = set()
        self.frames = 0
        self.broadcasting = False
        self.seq = 0


class _Conn(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            return  # viewers send nothing worth reading; close frames end in EOF anyway
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, self.buf = self.buf[:end].decode("latin-1"), b""
        assert self.transport is not None
        lines = head.split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        if headers.get("upgrade", "").lower() != "websocket":
            # Health checks and stray requests: answer and close.
            body = b"ok"
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n" + body
            )
            self.transport.close()
            return
        self.transport.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_key(headers.get('sec-websocket-key', ''))}\r\n\r\n"
            ).encode()
        )
        self.upgraded = True
        self.hub.sockets.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.hub.sockets.discard(self.transport)


async def _broadcast(hub: Hub, rate: float) -> None:
    period = 1.0 / rate
    next_at = time.monotonic()
    while True:
        next_at += period
        if hub.broadcasting and hub.sockets:
            hub.seq += 1
            # About the size of a push update: a few option totals.
            frame = server_frame(
                json.dumps({"seq": hub.seq, "t": time.time(), "totals": [1234] * 8}).encode()
            )
            for t in list(hub.sockets):
                t.write(frame)
            hub.frames += len(hub.sockets)
        # A late tick is not made up for: the rate achieved is what gets reported.
        next_at = max(next_at, time.monotonic())
        await asyncio.sleep(next_at - time.monotonic())


async def _report(hub: Hub) -> None:
    while True:
        await asyncio.sleep(1.0)
        print(
            json.dumps(
                {"held": len(hub.sockets), "frames": hub.frames, "seq": hub.seq,
                 "broadcasting": hub.broadcasting}
            ),
            flush=True,
        )  # fmt: skip


async def serve(host: str, ports: Sequence[int], rate: float) -> None:
    hub = Hub()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(hub, "broadcasting", True))
    loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(hub, "broadcasting", False))
    servers = [
        await loop.create_server(lambda: _Conn(hub), host, port, backlog=4096) for port in ports
    ]
    print(json.dumps({"listening": list(ports)}), flush=True)
    try:
        await asyncio.gather(_broadcast(hub, rate), _report(hub))
    finally:
        for s in servers:
            s.close()


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.wsbroadcast")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, action="append", required=True, help="repeatable: one listener each"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="updates per second")
    args = parser.parse_args(argv)
    raise_nofile()
    asyncio.run(serve(args.host, args.port, args.rate))


if __name__ == "__main__":
    main()
