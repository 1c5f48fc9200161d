"""The audit after a load test: accepted by the clients = Redis live count = PostgreSQL
total = the last count the viewers saw, per poll and option.

Runs in the parent process (plain threads and asyncio, never gevent).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buzzer.http import api
from loadtest.plan import Plan


@dataclass
class Clients:
    """Everything the locust processes wrote, added up."""

    accepted: dict[str, dict[str, int]] = field(default_factory=dict)
    votes_accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    unresolved: list[dict[str, Any]] = field(default_factory=list)
    timeline: dict[int, dict[str, int]] = field(default_factory=dict)
    probe: list[tuple[float, float | None]] = field(default_factory=list)
    latency: list[tuple[int, float]] = field(default_factory=list)
    viewers: list[dict[str, Any]] = field(default_factory=list)
    operator: list[dict[str, Any]] = field(default_factory=list)
    devices: int = 0
    processes: int = 0


def collect(out: Path) -> Clients:
    c = Clients()
    accepted: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    timeline: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    refused: dict[str, int] = defaultdict(int)
    for path in sorted(out.glob("clients-*.json")):
        d = json.loads(path.read_text())
        c.processes += 1
        for poll, opts in d["accepted"].items():
            for opt, n in opts.items():
                accepted[poll][opt] += n
        for sec, v in d["timeline"].items():
            for k, n in v.items():
                timeline[int(sec)][k] += n
        for k, n in d["refused"].items():
            refused[k] += n
        c.votes_accepted += d["votes_accepted"]
        c.retries += d["retries"]
        c.unresolved += d["unresolved"]
        c.probe += [(t, ms) for t, ms in d["probe"]]
        c.latency += [(int(t), ms) for t, ms in d.get("latency", [])]
        c.viewers += d["viewers"]
        c.operator += d["operator"]
        c.devices += d["devices"]
    resolved = out / "resolved.json"
    if resolved.exists():
        # Votes the parent resolved after the run (see resolve()): their answers count too.
        for r in json.loads(resolved.read_text()):
            if r.get("accepted"):
                accepted[r["poll"]][r["option"]] += r["accepted"]
                c.votes_accepted += 1
        c.unresolved = [r for r in json.loads(resolved.read_text()) if r.get("status") is None]
    c.accepted = {p: dict(o) for p, o in accepted.items()}
    c.timeline = {s: dict(v) for s, v in sorted(timeline.items())}
    c.refused = dict(refused)
    c.probe.sort(key=lambda x: x[0])
    return c


def _post_vote(host: str, vote: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps(
        {"option": vote["option"], "count": vote["count"], "vote_id": vote["vote_id"]}
    ).encode()
    req = urllib.request.Request(
        f"{host.rstrip('/')}/v1/polls/{vote['poll']}/votes",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {vote['token']}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}


def resolve(plan: Plan, out: Path, unresolved: list[dict[str, Any]], deadline_s: float = 30) -> int:
    """Ask again, with the same vote id, about votes a client gave up on or was stopped in
    the middle of: the answer is the original one if it was appended (also after the
    close), else a 409 once the poll is closed. Returns how many stay unknown."""
    if not unresolved:
        return 0
    from concurrent.futures import ThreadPoolExecutor

    end = time.monotonic() + deadline_s
    transient = (0, 429, 500, 502, 503, 504)

    def ask(vote: dict[str, Any]) -> dict[str, Any]:
        status, body = _post_vote(plan.host, vote)
        while status in transient and time.monotonic() < end:
            time.sleep(0.5)
            status, body = _post_vote(plan.host, vote)
        entry = {k: vote[k] for k in ("poll", "option", "count", "vote_id")}
        entry["status"] = None if status in transient else status
        entry["accepted"] = int(body.get("accepted", 0)) if status == 202 else 0
        return entry

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, unresolved))
    (out / "resolved.json").write_text(json.dumps(results))
    return sum(1 for r in results if r["status"] is None)


def close_polls(plan: Plan) -> None:
    for p in plan.polls:
        try:
            api("POST", f"{plan.host.rstrip('/')}/v1/admin/polls/{p.id}/close", plan.admin_token)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # a poll that never opened stays a draft
                raise


@dataclass
class ServerState:
    redis: dict[str, dict[str, int]]
    postgres: dict[str, dict[str, int]]
    final: dict[str, bool]
    states: dict[str, str]
    backlog: int
    # Counted from the vote archive alone (the scrutineer's recount), per poll and option.
    archive: dict[str, dict[str, int]] = field(default_factory=dict)
    # Per poll: the digest stored with the frozen result (None until sealed), the digest
    # the recount computed, and how many archived rows no longer match their hash.
    sealed_digest: dict[str, str | None] = field(default_factory=dict)
    recount_digest: dict[str, str] = field(default_factory=dict)
    changed_rows: dict[str, int] = field(default_factory=dict)


def read_server(plan: Plan, redis_url: str, dsn: str, prefix: str, partitions: int) -> ServerState:
    import redis as redis_sync

    from services.common.messages import PG_GROUP, TALLY_GROUP, Keys
    from services.common.redisconn import connect_sync

    keys = Keys(prefix=prefix, partitions=partitions)
    r = connect_sync(redis_url)
    try:
        live: dict[str, dict[str, int]] = {}
        for p in plan.polls:
            counts = dict.fromkeys(p.options, 0)
            for part in range(partitions):
                for k, v in r.hgetall(keys.counts(part, p.id)).items():
                    key = k.decode() if isinstance(k, bytes) else str(k)
                    counts[key] = counts.get(key, 0) + int(v)
            live[p.id] = counts
        backlog = 0
        for part in range(partitions):
            for stream, group in ((keys.votes(part), TALLY_GROUP), (keys.applied(part), PG_GROUP)):
                try:
                    groups = r.xinfo_groups(stream)
                except redis_sync.ResponseError:
                    continue  # no stream yet
                for g in groups:
                    name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                    if name == group:
                        backlog += int(g.get("lag") or 0) + int(g.get("pending") or 0)
    finally:
        r.close()

    state = ServerState(redis=live, postgres={}, final={}, states={}, backlog=backlog)

    async def pg() -> None:
        import asyncpg

        from services.common.archive import recount

        conn = await asyncpg.connect(dsn)
        try:
            ids = [p.id for p in plan.polls]
            rows = await conn.fetch(
                "SELECT poll_id, option_key, count FROM totals WHERE poll_id = ANY($1)", ids
            )
            polls = await conn.fetch(
                "SELECT id, state, final, archive_digest FROM polls WHERE id = ANY($1)", ids
            )
            for p in plan.polls:
                counted = await recount(conn, p.id)
                state.archive[p.id] = {o: counted.counts.get(o, 0) for o in p.options}
                state.recount_digest[p.id] = counted.digest
                state.changed_rows[p.id] = len(counted.changed)
        finally:
            await conn.close()
        state.postgres = {p.id: dict.fromkeys(p.options, 0) for p in plan.polls}
        for row in rows:
            state.postgres[row["poll_id"]][row["option_key"]] = int(row["count"])
        state.final = {r["id"]: bool(r["final"]) for r in polls}
        state.states = {r["id"]: r["state"] for r in polls}
        state.sealed_digest = {r["id"]: r["archive_digest"] for r in polls}

    asyncio.run(pg())
    return state


def drain(
    plan: Plan, redis_url: str, dsn: str, prefix: str, partitions: int, timeout: float = 60.0
) -> tuple[ServerState, bool]:
    """Wait until nothing is left to apply: backlog 0, counts steady, every opened poll
    final. Returns the state and whether it settled before the deadline."""
    deadline = time.monotonic() + timeout
    prev: ServerState | None = None
    while True:
        s = read_server(plan, redis_url, dsn, prefix, partitions)
        opened = [p for p, st in s.states.items() if st != "draft"]
        settled = (
            s.backlog == 0
            and prev is not None
            and prev.redis == s.redis
            and prev.postgres == s.postgres
            and prev.archive == s.archive
            and all(s.final.get(p) and s.sealed_digest.get(p) for p in opened)
        )
        if settled:
            return s, True
        if time.monotonic() > deadline:
            return s, False
        prev = s
        time.sleep(0.5)


@dataclass
class AuditResult:
    ok: bool
    lines: list[str]
    problems: list[str]
    table: list[dict[str, Any]]


def _viewer_last(viewers: list[dict[str, Any]], poll: str) -> tuple[dict[str, set[int]], bool, int]:
    """Per option, the distinct last counts the viewers saw; whether all saw the final
    result; the version regressions they saw."""
    last: dict[str, set[int]] = defaultdict(set)
    all_final = True
    regressions = 0
    watching = [v for v in viewers if v["kind"] == "viewer"]
    for v in watching:
        rec = v["polls"].get(poll)
        if rec is None:
            all_final = False
            for opt in last:
                last[opt].add(0)
            continue
        regressions += rec["regressions"]
        all_final = all_final and rec["final"]
        for opt, n in rec["counts"].items():
            last[opt].add(int(n))
    return last, all_final and bool(watching), regressions


def audit(plan: Plan, clients: Clients, server: ServerState, settled: bool) -> AuditResult:
    problems: list[str] = []
    table: list[dict[str, Any]] = []
    lines = [
        f"{'poll':<14} {'option':<10} {'clients':>9} {'redis':>9} {'postgres':>9} "
        f"{'archive':>9} {'viewers':>11}  verdict"
    ]
    for p in plan.polls:
        seen, all_final, regressions = _viewer_last(clients.viewers, p.id)
        state = server.states.get(p.id, "?")
        for opt in p.options:
            a = clients.accepted.get(p.id, {}).get(opt, 0)
            r = server.redis[p.id].get(opt, 0)
            g = server.postgres[p.id].get(opt, 0)
            arc = server.archive.get(p.id, {}).get(opt, 0)
            v = seen.get(opt, {0})
            vtxt = str(next(iter(v))) if len(v) == 1 else f"{min(v)}..{max(v)}"
            diffs = []
            if r != a:
                diffs.append(f"redis {r - a:+d}")
            if g != a:
                diffs.append(f"postgres {g - a:+d}")
            if arc != a:
                diffs.append(f"archive {arc - a:+d}")
            if v != {a}:
                diffs.append("viewers " + ", ".join(f"{n - a:+d}" for n in sorted(v)))
            verdict = "ok" if not diffs else "MISMATCH " + "; ".join(diffs)
            if diffs:
                problems.append(
                    f"poll {p.id} option {opt}: clients accepted {a}, "
                    + "; ".join(diffs)
                    + " (relative to the clients)"
                )
            lines.append(
                f"{p.id:<14} {opt:<10} {a:>9} {r:>9} {g:>9} {arc:>9} {vtxt:>11}  {verdict}"
            )
            table.append(
                {
                    "poll": p.id,
                    "option": opt,
                    "clients": a,
                    "redis": r,
                    "postgres": g,
                    "archive": arc,
                    "viewers": sorted(v),
                    "ok": not diffs,
                }
            )
        if state != "draft":
            if not server.final.get(p.id):
                problems.append(f"poll {p.id}: the PostgreSQL result is not final")
            sealed = server.sealed_digest.get(p.id)
            if not sealed:
                problems.append(f"poll {p.id}: no archive digest is stored with the result")
            elif sealed != server.recount_digest.get(p.id):
                problems.append(f"poll {p.id}: the recount's digest differs from the sealed one")
            if server.changed_rows.get(p.id):
                problems.append(
                    f"poll {p.id}: {server.changed_rows[p.id]} archived rows "
                    "no longer match their hash"
                )
            if not all_final:
                problems.append(f"poll {p.id}: not every viewer saw the final result")
        if regressions:
            problems.append(
                f"poll {p.id}: viewers saw the version go backwards {regressions} times"
            )
    if clients.unresolved:
        problems.append(f"{len(clients.unresolved)} votes never got a definite answer")
    if not settled:
        problems.append(f"the tally did not settle in time (backlog {server.backlog})")
    if clients.processes == 0:
        problems.append("no locust process reported its clients")
    return AuditResult(ok=not problems, lines=lines, problems=problems, table=table)
