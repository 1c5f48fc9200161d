"""A real Prometheus (Debian's binary) beside the real stack and HAProxy, as
``buzzer up --monitoring`` runs it: every metric the rules and the dashboard name is
served by some process, and the tally-lag alert goes pending, fires while the tally is
stopped under a flow of votes, and resolves once it is back.

The rules are the production ones rendered with every ``for`` window divided by 12 (1 m
becomes 5 s) and a batch size of 20, so the lag bound (5 batches) is 100 votes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from buzzer import monitoring
from buzzer.monitoring import Bounds, LocalPrometheus, LocalTargets
from buzzer.ports import free_port
from buzzer.stack import wait_ready
from tests.support import eventually
from tests.support.stack import RunningStack, api, create_open_poll, local_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
BATCH = 20
FOR_SCALE = 1 / 12
LAG_ALERT = "BuzzerTallyLagging"


@dataclass
class Monitored:
    rs: RunningStack
    prom: LocalPrometheus


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    if shutil.which("prometheus") is None:
        pytest.fail(
            "prometheus not found: install Debian's `prometheus` package "
            "(apt-get install prometheus; ./scripts/setup does)"
        )
    tmp = tmp_path_factory.mktemp("monitoring")
    database = os.environ.get("TEST_DATABASE", "buzzer_test") + "_monitoring"
    env = {"BUZZER_BATCH_SIZE": str(BATCH), "BUZZER_DEVICE_RATE_PER_S": "100000"}
    with local_stack(tmp, database=database, haproxy=True, push=True, extra_env=env) as rs:
        prom = LocalPrometheus(tmp / "prometheus", free_port()).start(
            LocalTargets.of(rs.stack),
            replace(Bounds.defaults(), batch_size=BATCH),
            interval_s=1,
            for_scale=FOR_SCALE,
        )
        try:
            yield Monitored(rs, prom)
        finally:
            prom.stop()


def exposed_names(text: str) -> set[str]:
    """Metric names a /metrics page serves, including families without samples yet."""
    names: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\w+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
            elif kind == "summary":
                names.update(f"{name}_{s}" for s in ("sum", "count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def scrape_all(rs: RunningStack) -> set[str]:
    ports = [p for ports in LocalTargets.of(rs.stack).ports.values() for p in ports]
    names: set[str] = set()
    async with aiohttp.ClientSession() as s:
        for port in ports:
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200, port
                names |= exposed_names(await r.text())
    return names


def test_every_metric_of_the_rules_and_the_dashboard_is_served(monitored: Monitored) -> None:
    served = asyncio.run(scrape_all(monitored.rs))
    rules = yaml.safe_load((ROOT / "deploy/prometheus" / monitoring.RULES_FILE).read_text())
    exprs = [r["expr"] for r in rules["groups"][0]["rules"]]
    exprs += monitoring.dashboard_exprs((ROOT / "deploy/grafana/buzzer.json").read_text())
    named = set().union(*(monitoring.metric_names(e) for e in exprs))
    # `up` is Prometheus's own series for every target, not a process's metric.
    missing = sorted(named - served - {"up"})
    assert not missing, f"named in rules or dashboard, served by no process: {missing}"
    assert any(n.startswith("haproxy_") for n in named)


async def prom_get(s: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with s.get(url, params=params) as r:
        body = await r.json()
        assert r.status == 200 and body["status"] == "success", body
        return body["data"]


async def lag_alert(s: aiohttp.ClientSession, prom: str) -> dict[str, Any] | None:
    alerts = (await prom_get(s, f"{prom}/api/v1/alerts"))["alerts"]
    found = [a for a in alerts if a["labels"]["alertname"] == LAG_ALERT]
    return found[0] if found else None


async def query(s: aiohttp.ClientSession, prom: str, expr: str) -> list[dict[str, Any]]:
    return list((await prom_get(s, f"{prom}/api/v1/query", query=expr))["result"])


async def vote_flow(rs: RunningStack, poll: str, token: str, stop: asyncio.Event) -> int:
    """Votes through HAProxy, one at a time per worker, until ``stop``."""
    accepted = 0

    async def worker(s: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while not stop.is_set():
            body = {"option": "o0", "count": 1, "vote_id": str(uuid.uuid4())}
            async with s.post(
                f"{rs.url}/v1/polls/{poll}/votes",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                assert r.status == 202, await r.text()
                accepted += 1
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(worker(s) for _ in range(3)))
    return accepted


async def stop_and_restart_tally(m: Monitored) -> None:
    rs, prom = m.rs, m.prom.url
    tally = next(c for c in rs.stack.children if c.name == "tally")
    async with aiohttp.ClientSession() as s:
        poll = (await create_open_poll(s, rs, options=2))["id"]
        token = (await api(s, "POST", f"{rs.url}/v1/devices", expect=201))["token"]
        stop = asyncio.Event()
        flow = asyncio.create_task(vote_flow(rs, poll, token, stop))
        try:
            # Votes flow and the tally keeps up: Prometheus sees it applying, no alert.
            async def applying() -> bool:
                rate = await query(s, prom, "sum(rate(buzzer_tally_applied_entries_total[5s]))")
                return bool(rate) and float(rate[0]["value"][1]) > 0

            await eventually(applying, timeout=30, interval=0.5)
            assert await lag_alert(s, prom) is None

            assert tally.proc is not None
            tally.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(tally.proc.wait, 30)

            states: list[str] = []

            async def firing() -> bool:
                alert = await lag_alert(s, prom)
                if alert is not None:
                    states.append(alert["state"])
                return alert is not None and alert["state"] == "firing"

            await eventually(firing, timeout=60, interval=0.2)
            # It was pending first: Prometheus's own record of the alert's states says so
            # (the polling above may have missed the pending window).
            pending = await query(
                s,
                prom,
                f'max_over_time(ALERTS{{alertname="{LAG_ALERT}",alertstate="pending"}}[5m])',
            )
            assert pending and pending[0]["value"][1] == "1", pending
            assert states[-1] == "firing" and set(states) <= {"pending", "firing"}
            alert = await lag_alert(s, prom)
            assert alert is not None
            assert alert["labels"]["severity"] == "critical"
            assert alert["annotations"]["runbook"] == f"{monitoring.RUNBOOK}#{LAG_ALERT.lower()}"

            tally.start(rs.stack.state_dir / "logs")
            await asyncio.to_thread(wait_ready, tally, 30)

            async def resolved() -> bool:
                return await lag_alert(s, prom) is None

            await eventually(resolved, timeout=60, interval=0.5)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                accepted = await flow
        assert accepted > 5 * BATCH


def test_tally_lag_alert_pends_fires_and_resolves(monitored: Monitored) -> None:
    asyncio.run(stop_and_restart_tally(monitored))
