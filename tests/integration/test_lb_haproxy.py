"""A real HAProxy, rendered by lb.render, in front of stand-in web nodes (bench.tools.echo)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from buzzer.certs import make_cert
from buzzer.ports import free_port
from lb.inventory import LocalInventory, Server
from lb.process import HaproxyProcess
from lb.render import RateLimit, RenderParams, RenderSettings, render
from lb.runtime import OP_RUNNING
from lb.sync import sync
from tests.support.haproxy import connector, short_tmpdir, start_haproxy, wait_all_up
from tests.support.lb import EchoNode, Load

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed"),
]

PARAMS = RenderParams(maxconn=2000)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = short_tmpdir("lb-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def settings(workdir: Path) -> RenderSettings:
    return RenderSettings(
        runtime_socket=str(workdir / "admin.sock"),
        server_state_file=str(workdir / "servers.state"),
        bind_host="127.0.0.1",
        http_port=free_port(),
        stats_port=free_port(),
        log_target="stdout",
        # All test clients share one address; the limit has its own test.
        rate_limit=RateLimit(requests=1_000_000),
    )


@pytest.fixture
def nodes() -> Iterator[Callable[[str], EchoNode]]:
    started: list[EchoNode] = []

    def start(name: str) -> EchoNode:
        node = EchoNode(name).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def haproxy(workdir: Path) -> Iterator[Callable[[str, RenderSettings], HaproxyProcess]]:
    procs: list[HaproxyProcess] = []

    def start(config: str, settings: RenderSettings) -> HaproxyProcess:
        hap = start_haproxy(workdir, config, settings)
        procs.append(hap)
        return hap

    yield start
    for hap in procs:
        hap.stop()


def inv(**backends: list[EchoNode]) -> dict[str, list[Server]]:
    return {be: [Server.parse(n.address) for n in ns] for be, ns in backends.items()}


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.get(url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_routes_pages_api_and_websocket_plain(nodes, haproxy, settings) -> None:
    ingest, push = nodes("ingest-a"), nodes("push-a")
    hap = haproxy(render(PARAMS, inv(ingest=[ingest], push=[push]), settings), settings)
    wait_all_up(hap, "ingest", 1)
    wait_all_up(hap, "push", 1)
    base = f"http://127.0.0.1:{settings.http_port}"
    expected = {
        "/v1/polls/p1/votes": "ingest-a",
        "/v1/shows/s1": "ingest-a",
        "/v1/polls/p1/live": "push-a",
        "/results": "push-a",
        "/console": "push-a",
        "/static/app.js": "push-a",
        "/": "push-a",
    }
    async with aiohttp.ClientSession() as session:
        for path, backend in expected.items():
            status, body = await get_json(session, base + path)
            assert (status, body["backend"], body["path"]) == (200, backend, path)
        for path in ("/v1/polls/p1/live", "/v1/anything/else"):
            async with session.ws_connect(base + path) as ws:
                hello = json.loads(await ws.receive_str(timeout=5))
                assert hello == {"backend": "push-a", "path": path}
                await ws.send_str("clap")
                assert await ws.receive_str(timeout=5) == "clap"
        async with session.get(base + "/lb-healthz") as resp:
            assert resp.status == 200
        stats = f"http://127.0.0.1:{settings.stats_port}"
        async with session.get(stats + "/metrics") as resp:
            assert resp.status == 200
            assert "haproxy_backend_active_servers" in await resp.text()
        async with session.get(stats + "/stats;csv") as resp:
            assert resp.status == 200


def _peer_key_type(sock: ssl.SSLSocket) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    der = sock.getpeercert(binary_form=True)
    assert der is not None
    key = x509.load_der_x509_certificate(der).public_key()
    return (
        "ecdsa"
        if isinstance(key, ec.EllipticCurvePublicKey)
        else ("rsa" if isinstance(key, rsa.RSAPublicKey) else type(key).__name__)
    )


def _https_get(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None):  # type: ignore[no-untyped-def]
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        s.sendall(b"GET /v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data, _peer_key_type(s), s.session, s.session_reused


async def test_tls_ecdsa_first_rsa_fallback_resumption_redirect_and_websocket(
    nodes, haproxy, settings, workdir
) -> None:
    ecdsa, rsa_ = make_cert(workdir, "ecdsa"), make_cert(workdir, "rsa")
    settings = replace(settings, https_port=free_port(), certs=(str(ecdsa), str(rsa_)))
    ingest, push = nodes("ingest-a"), nodes("push-a")
    hap = haproxy(render(PARAMS, inv(ingest=[ingest], push=[push]), settings), settings)
    wait_all_up(hap, "push", 1)
    wait_all_up(hap, "ingest", 1)

    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=ecdsa.read_text() + rsa_.read_text())
    data, key, sess, _ = await asyncio.to_thread(_https_get, settings.https_port, ctx)
    assert data.startswith(b"HTTP/1.1 200") and b'"proto": "https"' in data
    assert key == "ecdsa"
    _, _, _, reused = await asyncio.to_thread(_https_get, settings.https_port, ctx, sess)
    assert reused, "session ticket/cache did not resume"

    rsa_only = ssl.create_default_context()
    rsa_only.load_verify_locations(cadata=rsa_.read_text())
    rsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
    rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    data, key, _, _ = await asyncio.to_thread(_https_get, settings.https_port, rsa_only)
    assert data.startswith(b"HTTP/1.1 200") and key == "rsa"

    async with aiohttp.ClientSession() as session:
        plain = f"http://127.0.0.1:{settings.http_port}/results?x=1"
        async with session.get(plain, allow_redirects=False) as resp:
            assert resp.status == 301
            assert resp.headers["Location"].startswith("https://")
        wss = f"https://localhost:{settings.https_port}/v1/polls/p1/live"
        async with (
            aiohttp.ClientSession(connector=connector(ctx)) as tls_session,
            tls_session.ws_connect(wss) as ws,
        ):
            hello = json.loads(await ws.receive_str(timeout=5))
            assert hello["backend"] == "push-a"
            await ws.send_str("buzz")
            assert await ws.receive_str(timeout=5) == "buzz"


async def test_killed_server_is_down_within_3s_and_retrying_clients_lose_nothing(
    nodes, haproxy, settings
) -> None:
    a, b = nodes("ingest-a"), nodes("ingest-b")
    hap = haproxy(render(PARAMS, inv(ingest=[a, b]), settings), settings)
    wait_all_up(hap, "ingest", 2)
    url = f"http://127.0.0.1:{settings.http_port}/v1/polls/p1/votes"
    async with Load(url, concurrency=8, retries=2) as load:
        await asyncio.sleep(0.5)
        b.kill()
        killed_at = time.monotonic()
        while True:
            states = {s.port: s for s in hap.runtime.servers_state("ingest")}
            if states[b.port].op_state != OP_RUNNING:
                break
            assert time.monotonic() - killed_at < 3.0, "killed server still up after 3 s"
            await asyncio.sleep(0.05)
        down_after = time.monotonic() - killed_at
        await asyncio.sleep(0.5)
    assert load.result.failed == 0, load.result.errors[:5]
    assert load.result.backends["ingest-b"] > 0 and load.result.backends["ingest-a"] > 0
    assert down_after < 3.0

    async with Load(url, concurrency=8, retries=0) as after:
        await asyncio.sleep(1.0)
    assert after.result.failed == 0, after.result.errors[:5]
    assert set(after.result.backends) == {"ingest-a"}


@pytest.mark.parametrize("new_connections", [True, False], ids=["new-conns", "keep-alive"])
async def test_reload_under_load_drops_no_request(
    nodes, haproxy, settings, new_connections
) -> None:
    a, b = nodes("ingest-a"), nodes("ingest-b")
    inventory = inv(ingest=[a, b])
    hap = haproxy(render(PARAMS, inventory, settings), settings)
    wait_all_up(hap, "ingest", 2)
    url = f"http://127.0.0.1:{settings.http_port}/v1/polls/p1/votes"
    workers = [hap.worker_pids()]
    # An old worker closes its idle keep-alive connections at once, and a request already
    # on the wire to one of them sees the close with no answer: the race every keep-alive
    # server has at its idle timeout too. Clients resend such a request once (RFC 9112
    # §9.3.1; a vote is idempotent by its vote id). New connections get no retry at all.
    retries = 0 if new_connections else 1
    async with Load(url, concurrency=8, new_connections=new_connections, retries=retries) as load:
        for i in range(3):
            changed = replace(settings, rate_limit=RateLimit(requests=1_000_001 + i))
            result = await asyncio.to_thread(hap.reload, render(PARAMS, inventory, changed))
            assert result.reloaded and result.changed
            workers.append(result.workers_after)
            await asyncio.sleep(0.3)
    assert load.result.failed == 0, load.result.errors[:5]
    assert load.result.ok > 100
    assert len({tuple(w) for w in workers}) == 4, workers


async def test_sync_adds_and_removes_a_node_without_reload_or_failure(
    nodes, haproxy, settings, workdir
) -> None:
    a, b = nodes("ingest-a"), nodes("ingest-b")
    hap = haproxy(render(PARAMS, inv(ingest=[a]), settings), settings)
    wait_all_up(hap, "ingest", 1)
    master, workers = hap.master_pid, hap.worker_pids()
    inventory_file = workdir / "inventory.json"
    source = LocalInventory(inventory_file)
    url = f"http://127.0.0.1:{settings.http_port}/v1/polls/p1/votes"

    async with Load(url, concurrency=8) as load:
        inventory_file.write_text(json.dumps({"ingest": [a.address, b.address]}))
        report = await asyncio.to_thread(sync, hap.runtime, source, "ingest")
        assert report.added == [b.address] and report.kept == [a.address]
        # HAProxy sends to the new node once its first health check passes; on a loaded
        # machine that took over 3 s (pytest -n 2). A bound for a failure, not a speed.
        deadline = time.monotonic() + 15
        while load.result.backends["ingest-b"] < 20:
            assert time.monotonic() < deadline, "added node took no traffic"
            await asyncio.sleep(0.05)

        inventory_file.write_text(json.dumps({"ingest": [a.address]}))
        report = await asyncio.to_thread(sync, hap.runtime, source, "ingest", drain_timeout=5)
        assert report.removed == [b.address] and report.forced == []
        removed_at = time.monotonic()
        await asyncio.sleep(0.5)

    assert load.result.failed == 0, load.result.errors[:5]
    # No request sent after the removal reached b (an answer b gave just before may
    # still be on its way to the client then: counting answers raced with it).
    assert load.result.last_sent_to["ingest-b"] <= removed_at
    assert load.result.last_sent_to["ingest-a"] > removed_at
    assert (hap.master_pid, hap.worker_pids()) == (master, workers)
    b_state = {s.port: s for s in hap.runtime.servers_state("ingest")}[b.port]
    assert b_state.in_maint


async def test_per_source_limit_answers_429_with_json(nodes, haproxy, settings) -> None:
    settings = replace(settings, rate_limit=RateLimit(requests=5, period_s=10))
    a = nodes("ingest-a")
    hap = haproxy(render(PARAMS, inv(ingest=[a]), settings), settings)
    wait_all_up(hap, "ingest", 1)
    url = f"http://127.0.0.1:{settings.http_port}/v1/polls/p1/votes"
    statuses = []
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as session:
        for _ in range(8):
            async with session.post(url, data=b"{}") as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert resp.headers["Content-Type"] == "application/json"
                    assert resp.headers["Retry-After"] == "10"
                    body = await resp.json()
    assert statuses == [200] * 5 + [429] * 3
    assert body["error"] == "rate_limited" and body["retry_after_s"] == 10
