"""A running ingest process with an open poll and device tokens, for the benchmarks that
cast real votes (``buzzer bench ingest`` and ``lb``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.tools.proc import stop
from bench.tools.redisproc import redis_server
from bench.tools.wrk import WRK_SCRIPT, WrkResult, pinned, wrk
from buzzer.http import api
from buzzer.ports import free_port


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout}s")


async def _count_entries(redis_url: str, prefix: str, partitions: int) -> int:
    import redis.asyncio as aioredis

    from services.common.messages import Keys

    keys = Keys(prefix=prefix, partitions=partitions)
    client = aioredis.from_url(redis_url)
    try:
        return sum([int(await client.xlen(keys.votes(p))) for p in range(partitions)])
    finally:
        await client.aclose()


async def _drop_prefix(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        batch = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(batch), 1000):
            await client.delete(*batch[i : i + 1000])
    finally:
        await client.aclose()


@dataclass
class VoteTarget:
    """A running ingest process with an open 8-option poll and device tokens, and the
    wrk script that casts unique votes against it."""

    url: str
    script: Path
    script_args: list[str]
    wrk_env: dict[str, str]
    prefix: str
    redis_url: str
    partitions: int
    pid: int
    """The ingest process (for its CPU time)."""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def wrk(self, seconds: float, connections: int, url: str | None = None) -> WrkResult:
        return wrk(
            url or self.url, seconds, connections, self.script, self.script_args, self.wrk_env
        )

    def entries(self) -> int:
        return asyncio.run(_count_entries(self.redis_url, self.prefix, self.partitions))


@contextlib.contextmanager
def vote_target(
    devices: int = 5000,
    cpu: int | None = 0,
    redis_cpu: int | None = 1,
    appendfsync: str = "always",
    code: Path | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> Iterator[VoteTarget]:
    """Ingest on core ``cpu``, against its own ``redis-server`` (AOF, ``appendfsync
    always``: the deployment's promise for a 202) on core ``redis_cpu``: Redis's work is
    another tier's cost, not ingest's. ``code``: run ingest from that checkout (another
    revision's worktree, bench.tools.checkout) instead of this one. ``wrap``: what runs
    ingest's command line (callgrind, bench.tools.callgrind)."""
    tmp = Path(tempfile.mkdtemp(prefix="buzzer-bench-"))
    try:
        pin = redis_cpu if (os.cpu_count() or 1) > 1 else None
        with (
            redis_server(tmp / "redis", cpu=pin, appendfsync=appendfsync) as port,
            _vote_target(devices, cpu, f"redis://127.0.0.1:{port}/0", tmp, code, wrap) as target,
        ):
            yield target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _vote_target(
    devices: int,
    cpu: int | None,
    redis_url: str,
    tmp: Path,
    code: Path | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> Iterator[VoteTarget]:
    from pydantic import SecretStr

    from services.common.db import migrate
    from services.common.settings import CommonSettings
    from services.common.tokens import TokenService

    common = CommonSettings()
    dsn = common.database_url.get_secret_value().rsplit("/", 1)[0] + "/buzzer_bench"
    asyncio.run(migrate(dsn))
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    secret, admin = uuid.uuid4().hex * 2, uuid.uuid4().hex
    env = {
        **os.environ,
        "BUZZER_KEY_PREFIX": prefix,
        "BUZZER_TOKEN_SECRET": secret,
        "BUZZER_ADMIN_TOKEN": admin,
        "DATABASE_URL": dsn,
        "REDIS_URL": redis_url,
        "BUZZER_LOG_LEVEL": "WARNING",
    }
    if code is not None:
        # `python -m` looks in the working directory first, then PYTHONPATH: both point
        # at the other checkout, ahead of this one's editable install.
        env["PYTHONPATH"] = str(code)
    script = tmp / "vote.lua"
    script.write_text(WRK_SCRIPT)
    tokens = TokenService(SecretStr(secret))
    (tmp / "tokens").write_text("\n".join(tokens.issue().token for _ in range(devices)) + "\n")
    port = free_port()
    argv = [sys.executable, "-m", "buzzer", "serve", "ingest", "--port", str(port)]
    if wrap is not None:
        argv = wrap(argv)
    ingest = subprocess.Popen(
        pinned(cpu, argv) if cpu is not None else argv, env=env, cwd=code or Path.cwd()
    )
    try:
        base = f"http://127.0.0.1:{port}"
        # Under callgrind, ingest takes several times as long to start.
        wait_http(f"{base}/readyz", timeout=20 if wrap is None else 120)
        show = api("POST", f"{base}/v1/admin/shows", admin, {"name": "bench"})
        poll = api(
            "POST",
            f"{base}/v1/admin/polls",
            admin,
            {
                "show_id": show["id"],
                "title": "bench",
                "options": [{"key": f"o{i}", "label": f"O{i}"} for i in range(8)],
                "max_votes_per_device": None,
                "max_count": 100,
            },
        )
        api("POST", f"{base}/v1/admin/polls/{poll['id']}/open", admin)
        yield VoteTarget(
            url=base,
            script=script,
            script_args=[str(tmp / "tokens")],
            wrk_env={"BENCH_POLL": poll["id"], "BENCH_OPTIONS": "8"},
            prefix=prefix,
            redis_url=redis_url,
            partitions=common.partitions,
            pid=ingest.pid,
        )
    finally:
        stop(ingest)
        asyncio.run(_drop_prefix(redis_url, prefix))
