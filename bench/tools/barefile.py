"""Locust against the bare aiohttp handler (``python -m bench.tools.bare``): the same vote JSON
at the same paced rate as the stack's voters, for the ceiling of ``buzzer bench stack``.

Env: ``BENCH_RATE`` (votes/s), ``BENCH_SECONDS``, ``BENCH_USER_RATE``, ``BENCH_OUT`` (dir).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner

RATE = float(os.environ.get("BENCH_RATE", "100"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
USER_RATE = float(os.environ.get("BENCH_USER_RATE", "10"))
OUT = Path(os.environ.get("BENCH_OUT", "."))

LATENCY: list[tuple[int, float]] = []
ACCEPTED: dict[int, int] = defaultdict(int)
STARTED: list[float] = []


class BareVoter(FastHttpUser):
    wait_time = constant_throughput(USER_RATE)
    network_timeout = 5.0
    connection_timeout = 5.0

    @task
    def vote(self) -> None:
        body = {
            "option": "clap",
            "count": 3,
            "vote_id": str(uuid.uuid4()),
            "client_ts": int(time.time() * 1000),
        }
        sent = time.perf_counter()
        with self.client.post(
            "/v1/polls/bare/votes",
            json=body,
            name="vote (bare)",
            headers={"Authorization": "Bearer bare"},
            catch_response=True,
        ) as r:
            if r.status_code == 202:
                r.success()
                LATENCY.append((int(time.time()), (time.perf_counter() - sent) * 1000))
                ACCEPTED[int(time.time())] += 1
            else:
                r.failure(str(r.status_code))


class Hold(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        if not STARTED:
            STARTED.append(time.time())
        if self.get_run_time() >= SECONDS:
            return None
        users = math.ceil(RATE / USER_RATE)
        return users, float(max(50, users))


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    if environment.runner is None:
        return
    if isinstance(environment.runner, MasterRunner):
        (OUT / "shape.json").write_text(json.dumps([[STARTED[0] if STARTED else 0, RATE, 0]]))
        return
    if STARTED:
        (OUT / "shape.json").write_text(json.dumps([[STARTED[0], RATE, 0]]))
    (OUT / f"bare-{os.getpid()}.json").write_text(
        json.dumps({"latency": LATENCY, "accepted": {str(k): v for k, v in ACCEPTED.items()}})
    )
