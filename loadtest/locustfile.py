"""Locust users that replay a show: voters, viewers, the prober and the operator.

Run by ``buzzer loadtest run`` as a subprocess (locust monkey-patches with gevent, so
it never shares a process with asyncio code); the plan comes from the JSON file named
by ``BUZZER_LOADTEST_PLAN``. Every process that runs users writes what its clients saw
to ``clients-<host>-<pid>.json`` in the plan's output directory at test stop; the
parent adds them up for the audit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import gevent
import msgspec
import websocket
from gevent.event import Event
from locust import FastHttpUser, LoadTestShape, User, constant, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest.plan import PROBE, Plan, PollPlan, offered
from services.common.api import VoteRequest

PLAN = Plan.load(Path(os.environ["BUZZER_LOADTEST_PLAN"]))
OUT = Path(PLAN.out_dir)

VOTE_DEADLINE_S = 30.0
"""A vote without a definite answer after this long is left to the parent to resolve."""
RETRY_AFTER_CAP_S = 10.0
POLL_STATE_TTL_S = 1.0


class ProcessState:
    """What this process's clients saw; written once, at test stop."""

    def __init__(self) -> None:
        self.accepted: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        """Taps per poll and option, from the ``accepted`` of 202s, once per vote id."""
        self.votes_accepted = 0
        self.refused: dict[str, int] = defaultdict(int)
        self.retries = 0
        self.pending: dict[str, dict[str, Any]] = {}
        """Votes sent without a definite answer yet; any left at the end are resolved later."""
        self.timeline: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.latency: list[tuple[int, float]] = []
        """(second, ms) of every vote request answered 202: percentiles over any window."""
        self.probe: list[tuple[float, float | None]] = []
        """(wall time of the 202, vote-to-screen ms or None if never seen)."""
        self.viewers: list[dict[str, Any]] = []
        self.operator: list[dict[str, Any]] = []
        self.devices = 0
        self.poll_state: dict[str, str] = {}
        self.poll_state_at = 0.0
        self.poll_state_busy = False

    def mark(self, what: str, n: int = 1) -> None:
        self.timeline[int(time.time())][what] += n

    def dump(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "accepted": {p: dict(o) for p, o in self.accepted.items()},
            "votes_accepted": self.votes_accepted,
            "refused": dict(self.refused),
            "retries": self.retries,
            "unresolved": list(self.pending.values()),
            "timeline": {str(s): dict(v) for s, v in sorted(self.timeline.items())},
            "probe": self.probe,
            "latency": self.latency,
            "viewers": self.viewers,
            "operator": self.operator,
            "devices": self.devices,
        }


STATE = ProcessState()
SHAPE_LOG: list[tuple[float, float, int]] = []
FINALS: set[tuple[str, str]] = set()
"""(viewer, poll) pairs whose final result a viewer saw (on the master: the shape waits)."""


def _retry_after(headers: Any, attempt: int) -> float:
    try:
        base = min(float(headers.get("Retry-After") or 0), RETRY_AFTER_CAP_S)
    except (TypeError, ValueError):
        base = 0.0
    if base <= 0:
        base = min(0.1 * 2**attempt, 2.0)
    # Jitter spreads a crowd that was refused together over the next second.
    return base * (1 + 0.5 * random.random())


class Device(FastHttpUser):
    """A phone: registers once, then casts votes with ids it makes itself."""

    abstract = True
    host = PLAN.host
    network_timeout = 5.0
    connection_timeout = 5.0
    token = ""

    def register(self) -> None:
        for attempt in range(20):
            with self.client.post("/v1/devices", name="register device", catch_response=True) as r:
                if r.status_code == 201 or r.status_code == 200:
                    self.token = r.json()["token"]
                    STATE.devices += 1
                    return
                r.failure(f"{r.status_code}")
                delay = _retry_after(r.headers or {}, attempt)
            gevent.sleep(delay)
        raise RuntimeError("could not register a device")

    def cast(self, poll: PollPlan, option: str, count: int) -> int | None:
        """Send one vote until it has a definite answer; the taps accepted, or None."""
        vid = uuid.uuid4()
        vote_id = str(vid)
        # Built from the API's own type: a body the load test sends is one ingest accepts.
        body = msgspec.json.encode(
            VoteRequest(option=option, vote_id=vid, count=count, client_ts=int(time.time() * 1000))
        ).decode()
        STATE.pending[vote_id] = {
            "poll": poll.id,
            "option": option,
            "count": count,
            "vote_id": vote_id,
            "token": self.token,
        }
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        path = f"/v1/polls/{poll.id}/votes"
        deadline = time.monotonic() + VOTE_DEADLINE_S
        attempt = 0
        while True:
            STATE.mark("sent")
            sent = time.perf_counter()
            with self.client.post(
                path, data=body, headers=headers, name=f"vote ({poll.kind})", catch_response=True
            ) as r:
                status = r.status_code
                if status == 202:
                    r.success()
                    STATE.latency.append((int(time.time()), (time.perf_counter() - sent) * 1000))
                    accepted = int(r.json()["accepted"])
                    del STATE.pending[vote_id]
                    STATE.accepted[poll.id][option] += accepted
                    STATE.votes_accepted += 1
                    STATE.mark("accepted")
                    STATE.mark("taps", accepted)
                    return accepted
                if status in (409, 422):
                    # Closed, not open yet, or this device already voted: a definite no.
                    r.success()
                    del STATE.pending[vote_id]
                    STATE.refused[str(status)] += 1
                    if status == 409:
                        STATE.poll_state[poll.id] = "closed?"
                    return None
                if status in (400, 401, 403, 404):
                    r.failure(f"{status}: {r.text[:200] if r.text else ''}")
                    del STATE.pending[vote_id]
                    STATE.refused[str(status)] += 1
                    return None
                # 429, 503, other 5xx, timeouts and broken connections (status 0): the vote
                # may or may not have been appended; the same vote id makes a retry safe.
                r.failure(f"{status or 'no answer'} (retried)")
                delay = _retry_after(r.headers or {}, attempt)
            if time.monotonic() + delay > deadline:
                return None
            attempt += 1
            STATE.retries += 1
            gevent.sleep(delay)

    def open_polls(self) -> list[PollPlan]:
        """Polls open now, from ``GET /v1/polls/{id}``, refreshed once a second per process."""
        now = time.monotonic()
        if now - STATE.poll_state_at > POLL_STATE_TTL_S and not STATE.poll_state_busy:
            STATE.poll_state_busy = True
            try:
                for p in PLAN.polls:
                    with self.client.get(
                        f"/v1/polls/{p.id}", name="poll state", catch_response=True
                    ) as r:
                        if r.status_code == 200:
                            STATE.poll_state[p.id] = r.json()["state"]
                            r.success()
                        else:
                            r.failure(str(r.status_code))
                STATE.poll_state_at = time.monotonic()
            finally:
                STATE.poll_state_busy = False
        return [p for p in PLAN.polls if STATE.poll_state.get(p.id) == "open"]


class Voter(Device):
    """Taps buzz/clap (batched, as the app sends them) and votes once in classic polls."""

    wait_time = constant_throughput(PLAN.user_rate)

    def on_start(self) -> None:
        self.voted: set[str] = set()
        self.register()

    @task
    def vote(self) -> None:
        polls = [p for p in self.open_polls() if p.kind == "buzz" or p.id not in self.voted]
        if not polls:
            return
        poll = random.choice(polls)
        options = PLAN.audience_options(poll)
        option = random.choices(options, weights=poll.weights or None)[0]
        if poll.kind == "vote":
            self.voted.add(poll.id)
            count = 1
        else:
            count = random.randint(1, min(poll.max_count, 10))
        self.cast(poll, option, count)


class LiveSocket:
    """One websocket of the live protocol following every poll of the plan."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.ws: websocket.WebSocket | None = None

    def connect(self) -> None:
        url = PLAN.ws_host.rstrip("/") + "/v1/live"
        self.ws = websocket.create_connection(url, timeout=5)
        for p in PLAN.polls:
            seen = self.record["polls"].get(p.id, {}).get("version")
            msg: dict[str, Any] = {"type": "subscribe", "poll": p.id}
            if seen is not None:
                msg["since_version"] = seen
            self.ws.send(json.dumps(msg))

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self.ws.close()
            self.ws = None

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message with counts (snapshot or update), or None when nothing came."""
        if self.ws is None:
            self.connect()
        assert self.ws is not None
        self.ws.settimeout(timeout)
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException):
            # Push restarted or dropped us: resume from the last version we saw.
            self.close()
            self.record["reconnects"] += 1
            gevent.sleep(0.2)
            return None
        msg = json.loads(raw)
        if msg.get("type") not in ("snapshot", "update"):
            return None
        poll = self.record["polls"].setdefault(
            msg["poll"],
            {
                "updates": 0,
                "versions": [],
                "version": None,
                "counts": {},
                "final": False,
                "regressions": 0,
            },
        )
        if poll["version"] is not None and msg["version"] < poll["version"]:
            poll["regressions"] += 1
        poll["updates"] += 1
        poll["versions"].append(msg["version"])
        poll["version"] = msg["version"]
        poll["counts"] = msg["counts"]
        poll["final"] = bool(msg.get("final"))
        self.record["messages"] += 1
        return msg


def _new_record(kind: str) -> dict[str, Any]:
    rec = {"kind": kind, "id": uuid.uuid4().hex[:8], "polls": {}, "messages": 0, "reconnects": 0}
    STATE.viewers.append(rec)
    return rec


class Viewer(User):
    """A phone or the studio screen watching the live counts."""

    fixed_count = PLAN.viewers
    wait_time = constant(0)

    def on_start(self) -> None:
        self.sock = LiveSocket(_new_record("viewer"))
        self.finals: set[str] = set()

    def on_stop(self) -> None:
        self.sock.close()

    @task
    def watch(self) -> None:
        # Short chunks so the user notices it is asked to stop within a second.
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            msg = self.sock.receive(0.5)
            if msg is not None and msg.get("final") and msg["poll"] not in self.finals:
                self.finals.add(msg["poll"])
                assert self.environment.runner is not None
                self.environment.runner.send_message(
                    "viewer_final", {"viewer": self.sock.record["id"], "poll": msg["poll"]}
                )


class Prober(Device):
    """Measures vote-to-screen: one vote at a time on the probe option, which nobody
    else votes, so after the 202 of its k-th accepted tap the first live message showing
    ``counts[probe] >= k`` is the first one that includes that vote."""

    fixed_count = 1
    wait_time = constant(PLAN.probe_interval_s)

    def on_start(self) -> None:
        self.register()
        self.sock = LiveSocket(_new_record("prober"))
        self.arrivals: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.changed = Event()
        self.mine: dict[str, int] = defaultdict(int)
        self.reader = gevent.spawn(self._read)

    def on_stop(self) -> None:
        self.reader.kill(block=False)
        self.sock.close()

    def _read(self) -> None:
        # Its own greenlet: a message is timestamped when it arrives, not when the voting
        # loop gets round to it.
        while True:
            msg = self.sock.receive(1.0)
            if msg is None:
                continue
            n = msg["counts"].get(PROBE)
            if n is not None:
                self.arrivals[msg["poll"]].append((int(n), time.perf_counter()))
                self.changed.set()

    @task
    def probe(self) -> None:
        polls = [p for p in self.open_polls() if p.kind == "buzz"]
        if not polls:
            return
        poll = max(polls, key=lambda p: p.open_at)  # the newest poll is the busiest
        got = self.cast(poll, PROBE, 1)
        t0, wall = time.perf_counter(), time.time()
        if not got:
            return
        self.mine[poll.id] += got
        k = self.mine[poll.id]
        deadline = t0 + 5.0
        while True:
            seen = next((t for n, t in self.arrivals[poll.id] if n >= k), None)
            if seen is not None:
                # Shown before our 202 was read: the screen was not late, count it as 0.
                ms = max(0.0, (seen - t0) * 1000)
                STATE.probe.append((wall, ms))
                events.request.fire(
                    request_type="WS",
                    name="vote-to-screen",
                    response_time=ms,
                    response_length=0,
                    exception=None,
                    context={},
                )
                self.arrivals[poll.id] = [(n, t) for n, t in self.arrivals[poll.id] if n >= k]
                return
            left = deadline - time.perf_counter()
            if left <= 0:
                STATE.probe.append((wall, None))
                events.request.fire(
                    request_type="WS",
                    name="vote-to-screen",
                    response_time=5000,
                    response_length=0,
                    exception=TimeoutError("not shown in 5 s"),
                    context={},
                )
                return
            self.changed.clear()
            self.changed.wait(left)


class Operator(FastHttpUser):
    """The producer: opens and closes the show's polls on its schedule (admin API)."""

    fixed_count = 1
    host = PLAN.host
    wait_time = constant(0)

    def on_start(self) -> None:
        self.t0 = time.monotonic()
        actions = [(p.open_at * PLAN.duration_s, "open", p.id) for p in PLAN.polls]
        actions += [(p.close_at * PLAN.duration_s, "close", p.id) for p in PLAN.polls]
        self.actions = sorted(actions)

    @task
    def run_schedule(self) -> None:
        if not self.actions:
            gevent.sleep(0.5)
            return
        at, what, poll = self.actions[0]
        wait = self.t0 + at - time.monotonic()
        if wait > 0:
            gevent.sleep(min(wait, 0.5))
            return
        for attempt in range(10):
            with self.client.post(
                f"/v1/admin/polls/{poll}/{what}",
                name=f"admin {what}",
                headers={"Authorization": f"Bearer {PLAN.admin_token}"},
                catch_response=True,
            ) as r:
                if r.status_code == 200:
                    r.success()
                    STATE.operator.append({"t": time.time(), "action": what, "poll": poll})
                    STATE.poll_state_at = 0.0  # voters here learn it at once
                    break
                r.failure(str(r.status_code))
                delay = _retry_after(r.headers or {}, attempt)
            gevent.sleep(delay)
        self.actions.pop(0)


FIXED = Viewer.fixed_count + Prober.fixed_count + Operator.fixed_count


class ShowShape(LoadTestShape):
    """Users follow the offered vote rate: each voter paces itself at ``user_rate`` votes/s
    (constant_throughput), so ``rate / user_rate`` voters offer ``rate``."""

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        t = self.get_run_time()
        d = PLAN.duration_s
        if t < d:
            rate = offered(PLAN.profile, t / d, PLAN.scale)
        elif t < d + PLAN.tail_s and len(FINALS) < PLAN.viewers * len(PLAN.polls):
            rate = 0.0  # the viewers wait for every poll's final result
        else:
            return None
        voters = math.ceil(rate / PLAN.user_rate - 1e-9)
        SHAPE_LOG.append((time.time(), rate, voters))
        return voters + FIXED, max(50.0, float(voters)), [Voter, Viewer, Prober, Operator]


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if runner is not None and not isinstance(runner, WorkerRunner):

        def on_final(environment: Environment, msg: Any, **_: Any) -> None:
            FINALS.add((msg.data["viewer"], msg.data["poll"]))

        runner.register_message("viewer_final", on_final)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if environment.runner is not None and not isinstance(environment.runner, MasterRunner):
        path = OUT / f"clients-{socket.gethostname()}-{os.getpid()}.json"
        path.write_text(json.dumps(STATE.dump()))
    if not isinstance(environment.runner, WorkerRunner) and SHAPE_LOG:
        (OUT / "shape.json").write_text(json.dumps(SHAPE_LOG))
