"""Abuse and access: signing-secret rotation with an overlap, a device token replayed
by another device, constant-time secret comparison, one vote per device across
several ingest processes, no secret in logs or error bodies, Origin and security
headers on what browsers load."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import REDIS_URL
from tests.support import eventually
from tests.support.faults import (
    VoteLog,
    counted,
    dedupe_ids,
    free_port,
    log_files,
    new_devices,
    post_vote,
)
from tests.support.stack import RunningStack, api, create_open_poll, local_stack
from tests.support.tally import migrated_database

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

RATE = 5
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    # Not aiohttp's, which names the Python and aiohttp versions.
    "Server": "buzzer",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with local_stack(
        tmp_path_factory.mktemp("abuse"),
        database="buzzer_test_faults",
        ingest=2,
        push=True,
        extra_env={"BUZZER_DEVICE_RATE_PER_S": str(RATE)},
    ) as rs:
        yield rs


# ----------------------------------------------------------------- rotation


@contextlib.contextmanager
def ingest_process(log: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "buzzer", "serve", "ingest", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(s: aiohttp.ClientSession, *bases: str) -> None:
    for base in bases:

        async def ready(base: str = base) -> bool:
            try:
                async with s.get(f"{base}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=20)


async def vote_status(
    s: aiohttp.ClientSession, base: str, poll: str, token: str
) -> tuple[int, Any]:
    async with s.post(
        f"{base}/v1/polls/{poll}/votes",
        json={"option": "o0", "vote_id": str(uuid.uuid4())},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        return r.status, await r.json()


def test_token_rotation_overlap_then_previous_secret_refused(tmp_path: Path) -> None:
    with migrated_database("buzzer_test_faults") as dsn:
        token_rotation(tmp_path, dsn)


def token_rotation(tmp_path: Path, dsn: str) -> None:
    old, new, admin = "old-" + uuid.uuid4().hex, "new-" + uuid.uuid4().hex, uuid.uuid4().hex
    prefix = f"e{uuid.uuid4().hex[:10]}"
    base_env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "BUZZER_KEY_PREFIX": prefix,
        "DATABASE_URL": dsn,
        "BUZZER_ADMIN_TOKEN": admin,
        "BUZZER_DEVICE_RATE_PER_S": "1000",
    }
    before = {**base_env, "BUZZER_TOKEN_SECRET": old}
    overlap = {
        **base_env,
        "BUZZER_TOKEN_SECRET": new,
        "BUZZER_TOKEN_SECRETS_PREVIOUS": json.dumps([old]),
    }
    after = {**base_env, "BUZZER_TOKEN_SECRET": new, "BUZZER_TOKEN_SECRETS_PREVIOUS": "[]"}

    async def scenario(a: str, b: str, c: str) -> None:
        async with aiohttp.ClientSession() as s:
            await wait_ready(s, a, b, c)
            hdr = {"Authorization": f"Bearer {admin}"}
            show = await api(
                s, "POST", f"{a}/v1/admin/shows", headers=hdr, json={"name": "r"}, expect=201
            )
            poll = await api(
                s,
                "POST",
                f"{a}/v1/admin/polls",
                headers=hdr,
                expect=201,
                json={
                    "show_id": show["id"],
                    "title": "t",
                    "max_votes_per_device": None,
                    "options": [{"key": "o0", "label": "A"}, {"key": "o1", "label": "B"}],
                },
            )
            await api(s, "POST", f"{a}/v1/admin/polls/{poll['id']}/open", headers=hdr)
            token_old = (await api(s, "POST", f"{a}/v1/devices", expect=201))["token"]
            token_new = (await api(s, "POST", f"{b}/v1/devices", expect=201))["token"]
            assert (
                jwt.get_unverified_header(token_old)["kid"]
                != jwt.get_unverified_header(token_new)["kid"]
            )
            # Overlap: the new secret signs, the previous one still verifies.
            assert (await vote_status(s, b, poll["id"], token_old))[0] == 202
            assert (await vote_status(s, b, poll["id"], token_new))[0] == 202
            # The new token is unknown to a process that has not rotated yet.
            assert (await vote_status(s, a, poll["id"], token_new))[0] == 401
            # Previous secret removed: its tokens are refused, naming why; new ones work.
            status, body = await vote_status(s, c, poll["id"], token_old)
            assert status == 401 and body["field"] == "Authorization", body
            assert "unknown key" in body["message"], body
            assert (await vote_status(s, c, poll["id"], token_new))[0] == 202
            # A token re-signed with the old secret under the new kid is a forgery.
            claims = jwt.decode(token_old, options={"verify_signature": False})
            kid = jwt.get_unverified_header(token_new)["kid"]
            forged = jwt.encode(claims, old, algorithm="HS256", headers={"kid": kid})
            status, body = await vote_status(s, c, poll["id"], forged)
            assert status == 401 and "signature" in body["message"], body
            texts = json.dumps(body)
            for secret in (old, new, admin):
                assert secret not in texts

    logs = [tmp_path / f"{n}.log" for n in ("before", "overlap", "after")]
    try:
        with (
            ingest_process(logs[0], before) as a,
            ingest_process(logs[1], overlap) as b,
            ingest_process(logs[2], after) as c,
        ):
            asyncio.run(scenario(a, b, c))
    finally:
        asyncio.run(_cleanup(prefix))
    for path in logs:
        text = path.read_text()
        for secret in (old, new, admin):
            assert secret not in text, path


async def _cleanup(prefix: str) -> None:
    import redis.asyncio as aioredis

    from tests.support import delete_prefix

    client = aioredis.from_url(REDIS_URL)
    try:
        await delete_prefix(client, prefix)
    finally:
        await client.aclose()


# ----------------------------------------------------------------- replay, one vote


async def replay_from_another_device(rs: RunningStack) -> None:
    a_url, b_url = rs.ingest_urls
    async with aiohttp.ClientSession() as s:
        one_vote = (await create_open_poll(s, rs, options=2, max_votes_per_device=1, max_count=1))[
            "id"
        ]
        clap = (await create_open_poll(s, rs, options=2))["id"]
        token = (await new_devices(s, a_url, 1))[0]
    # Device A, and "device B" presenting A's token: another connection, another ingest
    # process, another user agent and address. The token is the identity: B *is* A.
    auth = {"Authorization": f"Bearer {token}"}
    body = {"option": "o0", "vote_id": str(uuid.uuid4())}
    async with (
        aiohttp.ClientSession(headers={"User-Agent": "phone-A"}) as a,
        aiohttp.ClientSession(
            headers={"User-Agent": "phone-B", "X-Forwarded-For": "203.0.113.9"}
        ) as b,
    ):
        async with a.post(f"{a_url}/v1/polls/{one_vote}/votes", json=body, headers=auth) as r:
            assert r.status == 202
        # B replays A's request byte for byte: the same answer, counted once.
        async with b.post(f"{b_url}/v1/polls/{one_vote}/votes", json=body, headers=auth) as r:
            assert r.status == 202 and r.headers["Idempotent-Replayed"] == "true"
        # B casts its "own" vote with the token: A's one vote is spent.
        async with b.post(
            f"{b_url}/v1/polls/{one_vote}/votes",
            headers=auth,
            json={"option": "o1", "vote_id": str(uuid.uuid4())},
        ) as r:
            data = await r.json()
            assert r.status == 422 and data["error"] == "vote_limit", data
        # The rate limit is the device's, whoever presents the token, wherever it lands.
        log = VoteLog()

        async def burst(session: aiohttp.ClientSession, base: str) -> None:
            await asyncio.gather(
                *(
                    post_vote(session, base, clap, token, str(uuid.uuid4()), log)
                    for _ in range(3 * RATE)
                )
            )

        await asyncio.gather(burst(a, a_url), burst(b, b_url))
    assert set(log.statuses) <= {202, 429}, log.statuses
    assert log.missing_retry_after == 0
    # One fixed one-second window (already partly used by the votes above), or two if the
    # burst straddles its end: never more than the device's limit per window.
    assert 1 <= log.statuses[202] <= 2 * RATE and log.statuses[429] >= RATE, log.statuses

    async def applied() -> bool:
        return (
            await counted(REDIS_URL, rs.prefix, one_vote) == 1
            and await counted(REDIS_URL, rs.prefix, clap) == log.statuses[202]
        )

    await eventually(applied, timeout=20)


def test_token_replayed_from_another_device_acts_as_that_device(stack: RunningStack) -> None:
    asyncio.run(replay_from_another_device(stack))


async def one_vote_across_processes(rs: RunningStack) -> None:
    devices, tries = 20, 8
    async with aiohttp.ClientSession() as s:
        poll = (await create_open_poll(s, rs, options=4, max_votes_per_device=1, max_count=1))["id"]
        tokens = await new_devices(s, rs.ingest_urls[0], devices)
    results: dict[int, Counter[int]] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one(d: int, i: int) -> int:
            async with s.post(
                f"{rs.ingest_urls[i % 2]}/v1/polls/{poll}/votes",
                json={"option": f"o{i % 4}", "vote_id": str(uuid.uuid4())},
                headers={"Authorization": f"Bearer {tokens[d]}"},
            ) as r:
                await r.read()
                return r.status

        # Every device's burst goes to both processes at once.
        statuses = await asyncio.gather(*(one(d, i) for d in range(devices) for i in range(tries)))
    for k, st in enumerate(statuses):
        results.setdefault(k // tries, Counter())[st] += 1
    for d, c in results.items():
        assert c[202] == 1, (d, c)
        assert set(c) <= {202, 422, 429}, (d, c)
    assert len(await dedupe_ids(REDIS_URL, rs.prefix, poll)) == devices

    async def once_each() -> bool:
        return await counted(REDIS_URL, rs.prefix, poll) == devices

    await eventually(once_each, timeout=20)


def test_one_vote_per_device_holds_across_ingest_processes(stack: RunningStack) -> None:
    asyncio.run(one_vote_across_processes(stack))


# ----------------------------------------------------------------- secrets


def test_secrets_are_compared_in_constant_time() -> None:
    import jwt.algorithms

    from services.common import tokens
    from services.ingest.gateway import auth
    from services.push import handlers as push_handlers

    # Operator tokens have one check, hmac.compare_digest, which ingest and push both call;
    # and no == or != on it anywhere.
    assert "hmac.compare_digest(" in inspect.getsource(tokens.operator_of)
    assert "operator_of(" in inspect.getsource(tokens.Operators.operator)
    for module in (tokens, auth, push_handlers):
        source = inspect.getsource(module)
        if module is not tokens:
            assert "[OPERATORS].operator(" in source, module.__name__
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                assert "admin_token" not in text.lower() and "get_secret_value" not in text, text
    # Device tokens: PyJWT verifies HS256 signatures with hmac.compare_digest.
    assert "hmac.compare_digest(" in inspect.getsource(jwt.algorithms.HMACAlgorithm.verify)


async def exercise_errors(rs: RunningStack) -> list[str]:
    """Provoke refusals that involve the secrets; return every body seen."""
    admin = rs.admin
    secret = rs.env["BUZZER_TOKEN_SECRET"]
    bodies: list[str] = []
    base = rs.ingest_urls[0]
    async with aiohttp.ClientSession() as s:
        poll = (await create_open_poll(s, rs, options=2))["id"]
        token = (await new_devices(s, base, 1))[0]
        claims = jwt.decode(token, options={"verify_signature": False})
        kid = jwt.get_unverified_header(token)["kid"]
        expired = jwt.encode(
            {**claims, "exp": int(time.time()) - 10},
            secret,
            algorithm="HS256",
            headers={"kid": kid},
        )
        wrong_aud = jwt.encode(
            {**claims, "aud": "other"}, secret, algorithm="HS256", headers={"kid": kid}
        )
        attempts: list[tuple[str, str, dict[str, str], Any]] = [
            ("GET", "/v1/admin/shows", {"Authorization": f"Bearer {admin[:-1]}"}, None),
            ("GET", "/v1/admin/shows", {"Authorization": f"Bearer {admin}x"}, None),
            ("GET", "/v1/admin/shows", {"Authorization": f"Basic {admin}"}, None),
            ("POST", "/v1/admin/shows", {"Authorization": f"Bearer {admin}"}, {"name": 1}),
            (
                "POST",
                f"/v1/polls/{poll}/votes",
                {"Authorization": f"Bearer {expired}"},
                {"option": "o0", "vote_id": str(uuid.uuid4())},
            ),
            (
                "POST",
                f"/v1/polls/{poll}/votes",
                {"Authorization": f"Bearer {wrong_aud}"},
                {"option": "o0", "vote_id": str(uuid.uuid4())},
            ),
            (
                "POST",
                f"/v1/polls/{poll}/votes",
                {"Authorization": f"Bearer {token}x"},
                {"option": "o0", "vote_id": str(uuid.uuid4())},
            ),
            (
                "POST",
                f"/v1/polls/{poll}/votes",
                {"Authorization": f"Bearer {secret}"},
                {"option": "o0", "vote_id": str(uuid.uuid4())},
            ),
            (
                "POST",
                f"/v1/polls/{poll}/votes",
                {"Authorization": f"Bearer {token}"},
                {"option": admin, "vote_id": "x"},
            ),
            (
                "GET",
                f"/v1/admin/polls/{admin}/result.json",
                {"Authorization": f"Bearer {admin}"},
                None,
            ),
        ]
        for method, path, headers, body in attempts:
            async with s.request(method, base + path, headers=headers, json=body) as r:
                assert 400 <= r.status < 500, (method, path, r.status)
                bodies.append(await r.text())
        async with s.get(
            f"http://127.0.0.1:{rs.stack.push_port}/v1/ops",
            headers={"Authorization": f"Bearer {admin}x"},
        ) as r:
            assert r.status in (401, 403)
            bodies.append(await r.text())
    return bodies


def test_admin_token_and_secrets_never_in_logs_or_error_bodies(stack: RunningStack) -> None:
    bodies = asyncio.run(exercise_errors(stack))
    secrets = [stack.admin, stack.env["BUZZER_TOKEN_SECRET"]]
    # What the client sent may be echoed (an option key, a poll id): the admin token in
    # those two places is the caller's own input. The secrets the server holds are not.
    echoed = [b for b in bodies if stack.admin in b]
    assert all(
        '"error":"option_not_found"' in b
        or '"error":"invalid_field"' in b
        or '"error":"poll_not_found"' in b
        for b in echoed
    ), echoed
    for body in bodies:
        assert stack.env["BUZZER_TOKEN_SECRET"] not in body
    files = log_files(stack)
    assert {f.name for f in files} >= {"ingest-1.log", "ingest-2.log", "tally.log", "push.log"}
    for path in files:
        text = path.read_text()
        for secret in secrets:
            assert secret not in text, path.name


# ----------------------------------------------------------------- browsers


async def browser_headers(rs: RunningStack) -> None:
    base = rs.ingest_urls[0]
    push = f"http://127.0.0.1:{rs.stack.push_port}"
    async with aiohttp.ClientSession() as s:
        poll = (await create_open_poll(s, rs, options=2))["id"]
        token = (await new_devices(s, base, 1))[0]
        requests: list[tuple[str, str, dict[str, str], Any]] = [
            (
                "POST",
                f"/v1/polls/{poll}/votes",
                {"Authorization": f"Bearer {token}"},
                {"option": "o0", "vote_id": str(uuid.uuid4())},
            ),  # 202
            ("POST", f"/v1/polls/{poll}/votes", {}, {}),  # 401
            ("GET", f"/v1/polls/{poll}/tally", {}, None),  # 200
            ("GET", "/v1/nope", {}, None),  # 404
            ("PUT", f"/v1/polls/{poll}/tally", {}, None),  # 405
            ("GET", "/v1/openapi.json", {}, None),
        ]
        for method, path, headers, body in requests:
            async with s.request(method, base + path, headers=headers, json=body) as r:
                for name, value in SECURITY_HEADERS.items():
                    assert r.headers.get(name) == value, (method, path, r.status, name)
                assert r.content_type == "application/json", (path, r.status)
        # Push's pages: a CSP that forbids framing, nosniff, no referrer.
        async with s.get(f"http://127.0.0.1:{rs.stack.tally_port}/healthz") as r:
            assert r.headers["Server"] == "buzzer"
        for page in ("/results", "/console", "/config.json", "/healthz", "/metrics"):
            async with s.get(push + page) as r:
                assert r.headers["Server"] == "buzzer", page
                if page in ("/healthz", "/metrics"):
                    continue
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
                assert r.headers["Referrer-Policy"] == "no-referrer"
        # Websocket Origin: a foreign page's socket is refused (4003); the full matrix is
        # tests/integration/test_push_protocol.py::test_origin_check.
        async with s.ws_connect(
            f"{push}/v1/polls/{poll}/live", origin="https://evil.example"
        ) as ws:
            assert ws._response.headers["Server"] == "buzzer"
            msg = await ws.receive(timeout=10)
            if msg.type == aiohttp.WSMsgType.CLOSE:
                assert msg.data == 4003, msg
            else:
                closing = await ws.receive(timeout=10)
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4003, msg


def test_security_headers_and_websocket_origin_on_browser_facing_endpoints(
    stack: RunningStack,
) -> None:
    asyncio.run(browser_headers(stack))
