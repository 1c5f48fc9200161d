"""``buzzer loadtest``: a short show against a real local stack, then the audit, and an
audit that must fail once a vote is removed behind the system's back.

Locust runs as a subprocess (it monkey-patches with gevent); nothing of it is imported here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import RunningStack, local_stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    rs: RunningStack
    out: Path
    proc: subprocess.CompletedProcess[str]
    audit: dict[str, Any]


def _buzzer(rs: RunningStack, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buzzer", *args],
        env=rs.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("loadtest")
    # Through HAProxy, as `buzzer loadtest run` is used: votes and websockets on one port.
    with local_stack(tmp, database="buzzer_test_loadtest", ingest=2, push=True, haproxy=True) as rs:
        out = tmp / "out"
        proc = _buzzer(
            rs,
            "loadtest",
            "run",
            "--profile",
            "show",
            "--duration",
            "8s",
            "--scale",
            "0.3",
            "--viewers",
            "2",
            "--tail",
            "10",
            "--host",
            rs.url,
            "--admin-token",
            rs.admin,
            "--out",
            str(out),
            "--drain-timeout",
            "20",
        )
        audit = (
            json.loads((out / "audit.json").read_text()) if (out / "audit.json").exists() else {}
        )
        yield Run(rs=rs, out=out, proc=proc, audit=audit)


def test_show_run_passes_the_audit(run: Run) -> None:
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    assert "AUDIT OK" in run.proc.stdout
    assert run.audit["audit_ok"] and not run.audit["problems"]
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust.html", "chart.png"):
        assert (run.out / name).stat().st_size > 0, name


def test_each_user_class_did_its_part(run: Run) -> None:
    clients = [json.loads(p.read_text()) for p in run.out.glob("clients-*.json")]
    assert clients
    # Voters: accepted votes on every poll the operator opened, on audience options.
    accepted = {p: sum(o.values()) for c in clients for p, o in c["accepted"].items()}
    plan = json.loads((run.out / "plan.json").read_text())
    assert {p["id"] for p in plan["polls"]} <= {p for p, n in accepted.items() if n > 0}
    # Operator: opened and closed every poll on its schedule.
    actions = [(a["action"], a["poll"]) for c in clients for a in c["operator"]]
    assert sorted(actions) == sorted(
        [(w, p["id"]) for p in plan["polls"] for w in ("open", "close")]
    )
    # Viewers: followed every poll to its final result, versions never going back.
    viewers = [v for c in clients for v in c["viewers"] if v["kind"] == "viewer"]
    assert len(viewers) == 2
    for v in viewers:
        for p in plan["polls"]:
            rec = v["polls"][p["id"]]
            assert rec["final"] and rec["versions"] == sorted(rec["versions"])
    # Prober: vote-to-screen samples, all of them shown.
    v2s = run.audit["vote_to_screen"]
    assert v2s["samples"] >= 5 and v2s["lost"] == 0
    assert 0 <= v2s["p50_ms"] < 2000


def test_audit_reports_a_vote_removed_behind_the_systems_back(run: Run) -> None:
    row = next(r for r in run.audit["table"] if r["clients"] > 0 and r["option"] != "probe")
    poll, option = row["poll"], row["option"]
    asyncio.run(_remove_one_vote(run.rs, poll, option))
    proc = _buzzer(run.rs, "loadtest", "audit", "--out", str(run.out), "--drain-timeout", "3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(
        ln for ln in proc.stdout.splitlines() if ln.startswith(f"{poll} ") and f" {option} " in ln
    )
    assert "MISMATCH redis -1; postgres -1" in line, line
    assert (
        f"AUDIT FAILED: poll {poll} option {option}: clients accepted {row['clients']}, "
        "redis -1; postgres -1"
    ) in proc.stdout


async def _remove_one_vote(rs: RunningStack, poll: str, option: str) -> None:
    import asyncpg
    import redis.asyncio as aioredis

    from services.common.messages import Keys

    keys = Keys(prefix=rs.prefix, partitions=4)
    client = aioredis.from_url(rs.env["REDIS_URL"])
    try:
        for p in range(keys.partitions):
            if int(await client.hget(keys.counts(p, poll), option) or 0) > 0:
                await client.hincrby(keys.counts(p, poll), option, -1)
                break
    finally:
        await client.aclose()
    conn = await asyncpg.connect(rs.dsn)
    try:
        await conn.execute(
            "UPDATE totals SET count = count - 1 WHERE poll_id = $1 AND option_key = $2",
            poll,
            option,
        )
    finally:
        await conn.close()


def test_refused_votes_are_retried_with_the_same_id_and_stay_exact(tmp_path: Path) -> None:
    # One vote per second per device and a tiny backlog bound: voters get 429s and 503s
    # with Retry-After, and must retry each with the same vote id without double counting.
    env = {"BUZZER_DEVICE_RATE_PER_S": "1", "BUZZER_MAX_BACKLOG": "10"}
    with local_stack(
        tmp_path, database="buzzer_test_loadtest", ingest=1, push=True, extra_env=env
    ) as rs:
        out = tmp_path / "out"
        proc = _buzzer(
            rs,
            "loadtest",
            "run",
            "--profile",
            "soak",
            "--duration",
            "6s",
            "--scale",
            "1",
            "--user-rate",
            "3",
            "--viewers",
            "1",
            "--tail",
            "10",
            "--host",
            rs.url,
            "--ws-host",
            f"ws://127.0.0.1:{rs.stack.push_port}",
            "--admin-token",
            rs.admin,
            "--out",
            str(out),
            "--drain-timeout",
            "20",
            "--no-chart",
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    audit = json.loads((out / "audit.json").read_text())
    assert audit["retries"] > 0 and audit["accepted_votes"] > 0
    assert "AUDIT OK" in proc.stdout
