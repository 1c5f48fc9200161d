"""A minimal websocket client (RFC 6455, text frames only) on a bare asyncio protocol.

For the push bench (thousands of viewers per process: aiohttp's client costs far more
per socket) and for tests that need control of the socket (a tiny receive buffer, a
client that stops reading). Not for production use: no TLS, no fragmentation.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+


class HandshakeError(Exception):
    pass


def _mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return key + masked


def client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _mask(payload)


class WSClient(asyncio.Protocol):
    def __init__(self, on_text: Callable[[bytes], None] | None = None) -> None:
        self.on_text = on_text
        """Called for every text message; without it messages go to :attr:`messages`."""
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._open = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._open and not self._buf and len(data) >= 4 and data[0] == 0x81:
            # Fast path (the bench's hot loop): exactly one whole, unfragmented text frame
            # with a 7- or 16-bit length (a tally update is 100-300 bytes).
            n = data[1]
            start = 2
            if n == 126:
                n = (data[2] << 8) | data[3]
                start = 4
            if n < 65536 and len(data) == start + n:
                if self.on_text is not None:
                    self.on_text(data[start:])
                else:
                    self.messages.put_nowait(data[start:])
                return
        self._buf += data
        if not self._open:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 4]
            status = head.split("\r\n", 1)[0]
            if " 101 " not in status + " ":
                if not self.handshake.done():
                    self.handshake.set_exception(HandshakeError(status))
                assert self.transport is not None
                self.transport.close()
                return
            self._open = True
            self.handshake.set_result(None)
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result((1006, "connection lost"))

    # -- frames ------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        while len(buf) >= 2:
            op = buf[0] & 0x0F
            n = buf[1] & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            if op == OP_TEXT:
                if self.on_text is not None:
                    self.on_text(payload)
                else:
                    self.messages.put_nowait(payload)
            elif op == OP_PING:
                self._write(client_frame(OP_PONG, payload))
            elif op == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                self._write(client_frame(OP_CLOSE, payload[:2]))
                if not self.closed.done():
                    self.closed.set_result((code, reason))
                if self.transport is not None:
                    self.transport.close()
                return

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- API ---------------------------------------------------------------------------

    def send_text(self, text: str | bytes) -> None:
        self._write(client_frame(OP_TEXT, text.encode() if isinstance(text, str) else text))

    def send_binary(self, data: bytes) -> None:
        self._write(client_frame(OP_BINARY, data))

    def pause(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def close(self, code: int = 1000) -> None:
        self._write(client_frame(OP_CLOSE, struct.pack("!H", code)))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(
    url: str,
    *,
    origin: str | None = None,
    headers: dict[str, str] | None = None,
    rcvbuf: int | None = None,
    on_text: Callable[[bytes], None] | None = None,
    timeout: float = 10.0,
    source: str | None = None,
) -> WSClient:
    """Open a websocket to ``ws://host:port/path?query``; raises HandshakeError if refused.

    ``source``: the local address to connect from (say 127.0.0.7). One source address
    reaches one server port through at most the ephemeral port range (about 28,000 on
    Linux); the push bench spreads more viewers than that over several loopback sources.
    """
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    path = u.path + (f"?{u.query}" if u.query else "")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Before connect: the advertised window is fixed at the handshake.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        if source is not None:
            # The port is chosen at connect, per destination, not at bind: otherwise each
            # bind would take a port from the whole range and the range would run out sooner.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    proto = WSClient(on_text)
    await loop.create_connection(lambda: proto, sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    assert proto.transport is not None
    proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        await asyncio.wait_for(asyncio.shield(proto.handshake), timeout)
    except BaseException:
        proto.abort()
        raise
    return proto
