"""HTTP/2 at the edge: a real HAProxy with the generated TLS config offers h2 to app
clients and still upgrades websockets over HTTP/1.1."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.tools import h2load
from buzzer.certs import make_cert
from buzzer.ports import free_port
from lb.inventory import Server
from lb.process import HaproxyProcess
from lb.render import RateLimit, RenderParams, RenderSettings, render
from tests.support.haproxy import (
    connector,
    open_sockets,
    short_tmpdir,
    start_haproxy,
    wait_all_up,
)
from tests.support.lb import EchoNode

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed"),
]

VOTES = "/v1/polls/p1/votes"


class Edge:
    def __init__(self, workdir: Path, settings: RenderSettings, cert: Path) -> None:
        self.workdir, self.settings, self.cert = workdir, settings, cert

    @property
    def https(self) -> str:
        return f"https://localhost:{self.settings.https_port}"

    def ssl_context(self, alpn: list[str]) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=self.cert.read_text())
        ctx.set_alpn_protocols(alpn)
        return ctx


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    d = short_tmpdir("lbh2-")
    ingest, push = EchoNode("ingest-a").start(), EchoNode("push-a").start()
    cert = make_cert(d, "ecdsa")
    settings = RenderSettings(
        runtime_socket=str(d / "admin.sock"),
        bind_host="127.0.0.1",
        http_port=free_port(),
        https_port=free_port(),
        certs=(str(cert),),
        stats_port=free_port(),
        log_target="stdout",
        rate_limit=RateLimit(requests=1_000_000),
    )
    inventory = {
        "ingest": [Server.parse(ingest.address)],
        "push": [Server.parse(push.address)],
    }
    hap: HaproxyProcess | None = None
    try:
        hap = start_haproxy(d, render(RenderParams(maxconn=2000), inventory, settings), settings)
        wait_all_up(hap, "ingest", 1)
        wait_all_up(hap, "push", 1)
        yield Edge(d, settings, cert)
    finally:
        if hap is not None:
            hap.stop()
        ingest.stop()
        push.stop()
        shutil.rmtree(d, ignore_errors=True)


def _negotiated(port: int, ctx: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        return s.selected_alpn_protocol()


def test_alpn_prefers_h2_and_still_offers_http11(edge: Edge) -> None:
    port = edge.settings.https_port
    assert port is not None
    assert _negotiated(port, edge.ssl_context(["h2", "http/1.1"])) == "h2"
    assert _negotiated(port, edge.ssl_context(["http/1.1"])) == "http/1.1"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_a_vote_over_http2_reaches_ingest(edge: Edge) -> None:
    port = edge.settings.https_port
    res = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "--cacert",
            str(edge.cert),
            "--resolve",
            f"localhost:{port}:127.0.0.1",
            "-X",
            "POST",
            "-d",
            "{}",
            "-w",
            "\n%{http_version}",
            f"{edge.https}{VOTES}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    body, version = res.stdout.rsplit("\n", 1)
    assert version == "2"
    answer = json.loads(body)
    assert (answer["backend"], answer["path"], answer["method"]) == ("ingest-a", VOTES, "POST")
    assert answer["proto"] == "https"


@pytest.mark.skipif(not h2load.available(), reason="h2load not installed (nghttp2-client)")
def test_h2load_multiplexes_votes_on_few_connections(edge: Edge) -> None:
    r = h2load.h2load(f"{edge.https}{VOTES}", clients=2, streams=8, requests=400, body=b"{}")
    assert r.protocol == "h2", r.raw
    assert (r.requests, r.succeeded, r.status_2xx, r.errors) == (400, 400, 400, 0), r.raw
    h1 = h2load.h2load(f"{edge.https}{VOTES}", clients=2, streams=1, requests=40, h1=True)
    assert h1.protocol == "http/1.1", h1.raw
    assert (h1.status_2xx, h1.errors) == (40, 0), h1.raw


async def test_websocket_over_http11_on_the_h2_listener(edge: Edge) -> None:
    # A browser opens its websocket on an HTTP/1.1 connection even where h2 is offered.
    ctx = edge.ssl_context(["http/1.1"])
    async with (
        aiohttp.ClientSession(connector=connector(ctx)) as session,
        session.ws_connect(f"{edge.https}/v1/polls/p1/live") as ws,
    ):
        hello = json.loads(await ws.receive_str(timeout=5))
        assert hello == {"backend": "push-a", "path": "/v1/polls/p1/live"}
        await ws.send_str("clap")
        assert await ws.receive_str(timeout=5) == "clap"
    # Nothing left for a later test to trip over (tests/support/haproxy.py, connector).
    assert await open_sockets() == []


def test_h2_settings_announce_websockets_over_http2(edge: Edge) -> None:
    """RFC 8441: the server's SETTINGS carry ENABLE_CONNECT_PROTOCOL (0x8) = 1, which
    HAProxy 2.4+ sends unless told not to, so h2 clients may tunnel websockets too."""
    port = edge.settings.https_port
    assert port is not None
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        edge.ssl_context(["h2"]).wrap_socket(raw, server_hostname="localhost") as s,
    ):
        assert s.selected_alpn_protocol() == "h2"
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(0x4, 0, 0, b""))
        settings = _read_server_settings(s)
    assert settings.get(0x8) == 1, settings


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _read_exact(s: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed before the server's SETTINGS")
        data += chunk
    return data


def _read_server_settings(s: ssl.SSLSocket) -> dict[int, int]:
    while True:
        head = _read_exact(s, 9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        payload = _read_exact(s, length)
        if kind == 0x4 and not flags & 0x1:  # SETTINGS, not its ACK
            return {
                int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(
                    payload[i + 2 : i + 6], "big"
                )
                for i in range(0, len(payload), 6)
            }
