"""``bench ingest --instructions``: a server counted by callgrind, driven by a client that
sends exactly the requests it is given."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bench.target import wait_http
from bench.tools import bare as bare_app
from bench.tools import callgrind, exact
from bench.tools.proc import stop
from buzzer.ports import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not callgrind.available(), reason="valgrind (scripts/setup installs it)"),
]


def votes(n: int) -> list[bytes]:
    return [
        exact.post(
            "/v1/polls/p/votes",
            json.dumps({"option": "o1", "count": 1, "vote_id": f"v{i}"}).encode(),
            {"Content-Type": "application/json"},
        )
        for i in range(n)
    ]


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[tuple[int, callgrind.Counted]]:
    port = free_port()
    out = tmp_path / "bare.out"
    argv = [sys.executable, "-m", "bench.tools.bare", str(port)]
    proc = subprocess.Popen(callgrind.wrapped(argv, out))
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
        yield port, callgrind.Counted(proc.pid, out)
    finally:
        stop(proc, 30)


def test_instructions_are_counted_per_request_and_only_while_counting(
    bare: tuple[int, callgrind.Counted],
) -> None:
    port, counted = bare
    exact.send(port, votes(100), 8)  # not counted: the server's first requests
    small, answered = counted.count(lambda: exact.send(port, votes(200), 8))
    assert answered == {202: 200}
    big, answered = counted.count(lambda: exact.send(port, votes(400), 8))
    assert answered == {202: 400}
    # Twice the requests, about twice the instructions: the count is of the requests,
    # not of the server's start or of the time between counts.
    assert 1.7 < big / small < 2.3, (small, big)
    idle, _ = counted.count(lambda: None)
    assert idle < small / 20, (idle, small)


def test_the_client_sends_every_request_once_over_its_connections() -> None:
    seen: list[str] = []
    peers: set[int] = set()

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body["vote_id"])
        transport = request.transport
        assert transport is not None
        peers.add(transport.get_extra_info("peername")[1])
        status = 202 if body["vote_id"] != "v7" else 409
        return web.json_response(body, status=status)

    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/polls/{poll}/votes", echo)
    app.router.add_get("/readyz", bare_app.ready)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        answered = exact.send(port, votes(50), 4)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()
    assert answered == {202: 49, 409: 1}
    assert sorted(seen) == sorted(f"v{i}" for i in range(50))
    assert seen[:4] == [f"v{i}" for i in range(4)]  # in the order given
    assert len(peers) == 4


def test_totals_are_read_from_a_dump() -> None:
    dump = b"# callgrind format\nevents: Ir\nsummary: 1234\n\nfn=main\n1 1234\ntotals: 1234\n"
    assert callgrind.totals(dump) == 1234
    with pytest.raises(ValueError):
        callgrind.totals(b"events: Ir\n")
