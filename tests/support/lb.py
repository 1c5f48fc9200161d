"""Helpers for tests that put a real HAProxy in front of something: stand-in web nodes
and a bounded load loop that counts failures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from buzzer.ports import free_port


def wait_http_ok(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not answering 200 within {timeout:g}s")
        time.sleep(0.05)


class EchoNode:
    """``python -m bench.tools.echo`` as a subprocess, ready once ``/readyz`` answers."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EchoNode:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.tools.echo",
                "--port",
                str(self.port),
                "--name",
                self.name,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http_ok(f"http://{self.address}/readyz")
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> EchoNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    retried: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    backends: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    last_sent_to: dict[str, float] = field(default_factory=dict)
    """Per backend, when the latest request it answered was sent (monotonic): an answer
    can reach the client well after its server left, the request cannot."""


async def run_load(
    url: str,
    stop: asyncio.Event,
    *,
    concurrency: int = 8,
    new_connections: bool = True,
    retries: int = 0,
    method: str = "POST",
    max_seconds: float = 30.0,
    result: LoadResult | None = None,
) -> LoadResult:
    """Requests from ``concurrency`` clients until ``stop`` is set; a request counts as
    failed if it gets no 200 after ``retries`` more tries (clients that resend the same
    vote id, as the real ones do)."""
    import aiohttp

    result = result if result is not None else LoadResult()
    connector = aiohttp.TCPConnector(force_close=new_connections, limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=5)
    deadline = time.monotonic() + max_seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            for attempt in range(retries + 1):
                sent = time.monotonic()
                try:
                    async with session.request(method, url, data=b"{}") as resp:
                        body = await resp.json(content_type=None)
                        result.statuses[resp.status] += 1
                        if resp.status == 200:
                            result.ok += 1
                            result.backends[body["backend"]] += 1
                            result.last_sent_to[body["backend"]] = sent
                            break
                        err = f"status {resp.status}"
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    err = f"{type(exc).__name__}: {exc}"
                if attempt < retries:
                    result.retried += 1
                    continue
                result.failed += 1
                result.errors.append(err)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return result


class Load:
    """``async with Load(url) as load: ...`` runs :func:`run_load` for the body of the
    block; ``load.result`` fills in as it runs."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options
        self._stop = asyncio.Event()
        self._task: asyncio.Task[LoadResult] | None = None
        self.result = LoadResult()

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(
            run_load(self.url, self._stop, result=self.result, **self.options)
        )
        await asyncio.sleep(0.2)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task
