"""Capacity planner: an expected peak in, fleet sizes and the arithmetic out.

Pure: no I/O except :func:`load_measured`, which reads the profiles ``buzzer bench lb``
and ``buzzer bench redis`` wrote. ``infra/`` imports :class:`PlanInputs`,
:data:`PROFILES` and :func:`plan`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lb import instances

MEASURED_PATH = Path(__file__).parent / "profiles" / "measured.json"
REDIS_PATH = Path(__file__).parent / "profiles" / "redis.json"
PUSH_PATH = Path(__file__).parent / "profiles" / "push.json"
TALLY_PATH = Path(__file__).parent / "profiles" / "tally.json"

HAPROXY_FD_BUDGET = 4_194_304
"""The most file descriptors the user data lets HAProxy open (``LimitNOFILE``, raised
with ``fs.nr_open``): past a million connections memory binds first on the types in
lb/instances.py, so this is a ceiling, not the usual limit."""
HAPROXY_FD_RESERVE = 10_000
"""Descriptors a node keeps for what is not a proxied connection: listeners, health
checks, the runtime API, logs, and peers."""
HAPROXY_MEMORY_RESERVE_GIB = 1.0
"""Memory per instance kept for the OS, HAProxy's own base and its SSL session cache."""


def haproxy_nofile(maxconn: int) -> int:
    """Descriptors a node with this ``maxconn`` needs: a client and a server side each,
    and the reserve; what the user data sets ``LimitNOFILE`` to."""
    return 2 * maxconn + HAPROXY_FD_RESERVE


@dataclass(frozen=True)
class Profile:
    """Per-unit capacities: one HAProxy node (one core), one ingest/push/tally process."""

    name: str
    haproxy_new_conns_per_s: float
    haproxy_max_conns: int
    """Concurrent connections per node when ``haproxy_bytes_per_conn`` is unknown: a
    constant, the fallback only. With it measured, memory, descriptors and the update
    fan-out set the figure (:func:`conn_limit`)."""
    haproxy_tls_full_per_s: float
    haproxy_tls_resumed_per_s: float
    haproxy_keepalive_req_per_s: float
    ingest_votes_per_s: float
    push_viewers: int
    tally_votes_per_s: float
    haproxy_tls_full_ecdsa_per_s: float = 0.0
    """0 means unknown: the planner then uses the RSA figure, the cautious one."""
    haproxy_h2_req_per_s: float = 0.0
    """Votes per core from app clients that keep one TLS connection and multiplex
    requests on it over HTTP/2 (``bench lb`` h2_streams). 0 means unknown: TLS plans
    then cost their kept-alive votes at the plain HTTP/1.1 keep-alive figure."""
    redis_votes_per_s: float = 27_000.0
    """Votes one Redis shard both accepts (vote_batch.lua) and applies (apply.lua) per
    second. A shard is one core whatever the node's vCPUs: Redis runs scripts on one
    thread. ``buzzer bench redis`` measures it (``votes_per_cpu_s``)."""
    postgres_flushes_per_s: float = 20.0
    """Commits per partition per second by the PostgreSQL writer: one per stream read,
    which blocks up to ``block_ms`` (50 ms); under load batches grow, not commits."""
    postgres_rows_per_vcpu_s: float = 10_000.0
    """Upserted rows per PostgreSQL vCPU-second. An estimate, not a measurement."""
    postgres_commit_rows: float = 10.0
    """What one commit (its WAL flush) costs, in rows."""
    haproxy_bytes_per_conn: float = 0.0
    """HAProxy's memory (RSS) per held websocket, its client and server sides, after
    updates flowed (``bench lb --only websockets``). 0 means unknown: the planner then
    caps a node at ``haproxy_max_conns``."""
    haproxy_kernel_bytes_per_conn: float = 8192.0
    """The kernel's memory for the node's two TCP sockets of one websocket. The default
    is an estimate (socket structures and small idle buffers); the bench measures it
    machine-wide, so a busy machine makes it noisy."""
    haproxy_cpu_per_conn_update: float = 0.0
    """HAProxy core-seconds to forward one update to one websocket (the bench). 0 means
    unknown: the update fan-out is then not costed."""
    source: str = ""


HISTORICAL = Profile(
    name="historical",
    # The 2011 figure: one c1.medium HAProxy node, about 5K new connections/s.
    haproxy_new_conns_per_s=5000.0,
    # c1.medium had 1.7 GB; about 20K saturated connections per GB.
    haproxy_max_conns=30_000,
    # No TLS figures survive from 2011: these are this machine's, so that a TLS plan on
    # the historical profile is not silently free.
    haproxy_tls_full_per_s=650.0,
    haproxy_tls_full_ecdsa_per_s=1000.0,
    haproxy_tls_resumed_per_s=1400.0,
    haproxy_keepalive_req_per_s=5000.0 * 3,
    ingest_votes_per_s=4500.0,
    push_viewers=10_000,
    tally_votes_per_s=20_000.0,
    source="2011 node figure; TLS and process figures from this machine",
)

MEASURED_DEFAULTS = Profile(
    name="measured",
    haproxy_new_conns_per_s=13_000.0,
    # An estimate, not a measurement: idle websockets hold no buffers in HAProxy 2.x,
    # so a node is bound by file descriptors and memory well above this.
    haproxy_max_conns=100_000,
    haproxy_tls_full_per_s=650.0,
    haproxy_tls_full_ecdsa_per_s=1000.0,
    haproxy_tls_resumed_per_s=1400.0,
    haproxy_keepalive_req_per_s=68_000.0,
    ingest_votes_per_s=4500.0,
    push_viewers=10_000,
    tally_votes_per_s=20_000.0,
    source="defaults (no lb/profiles/measured.json)",
)


def load_measured(
    path: Path = MEASURED_PATH,
    base: Profile = MEASURED_DEFAULTS,
    redis_path: Path = REDIS_PATH,
    push_path: Path = PUSH_PATH,
    tally_path: Path = TALLY_PATH,
) -> Profile:
    """The measured profile: ``base`` with every figure found in ``path`` laid over it,
    the Redis shard's votes/s from ``redis_path`` (``buzzer bench redis``), the
    viewers one push process holds from ``push_path`` (``buzzer bench push``), and the
    tally consumer's votes and PostgreSQL's rows per core from ``tally_path``
    (``buzzer bench tally``)."""
    profile = base
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        pass
    else:
        known = {f.name for f in fields(Profile)}
        values = {k: v for k, v in data.get("profile", data).items() if k in known and k != "name"}
        values.setdefault("source", str(path))
        profile = replace(base, **values)
    votes = redis_votes_per_s(redis_path)
    if votes is not None:
        profile = replace(profile, redis_votes_per_s=votes)
    viewers = push_viewers_per_process(push_path)
    if viewers is not None:
        profile = replace(profile, push_viewers=viewers)
    figures: dict[str, Any] = dict(tally_figures(tally_path))
    return replace(profile, **figures)


def tally_figures(path: Path = TALLY_PATH) -> dict[str, float]:
    """From ``buzzer bench tally``: votes one consumer process applies per CPU-second
    (``tally_votes_per_s``) and rows PostgreSQL writes per CPU-second of its backends
    (``postgres_rows_per_vcpu_s``, counted as the planner counts rows); only the figures
    the file has."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    out: dict[str, float] = {}
    if data.get("tally_votes_per_cpu_s"):
        out["tally_votes_per_s"] = float(data["tally_votes_per_cpu_s"])
    if data.get("postgres_rows_per_cpu_s"):
        out["postgres_rows_per_vcpu_s"] = float(data["postgres_rows_per_cpu_s"])
    return out


def push_viewers_per_process(path: Path = PUSH_PATH) -> int | None:
    """The most viewers one push process holds at p99 under 200 ms, from ``buzzer bench
    push``'s ``viewers_per_process`` (at the top or under ``profile``); ``None``
    without the file or the figure."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    value = data.get("viewers_per_process") or data.get("profile", {}).get("viewers_per_process")
    return int(value) if value else None


def redis_votes_per_s(path: Path = REDIS_PATH) -> float | None:
    """Votes per Redis core-second, accepted and applied, from ``buzzer bench redis``'s
    output; ``None`` without the file.

    A vote costs one share of ``vote_batch.lua`` and one of ``apply.lua`` on the shard
    that owns its partition, so when only the two rates are there the figure is their
    harmonic combination, 1 / (1/accepted + 1/applied).
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if data.get("votes_per_cpu_s"):
        return float(data["votes_per_cpu_s"])
    accepted, applied = data.get("accepted_per_cpu_s"), data.get("applied_per_cpu_s")
    if accepted and applied:
        return 1.0 / (1.0 / float(accepted) + 1.0 / float(applied))
    return None


PROFILES: dict[str, Profile] = {"historical": HISTORICAL, "measured": load_measured()}


@dataclass(frozen=True)
class PlanInputs:
    peak_votes_per_s: float
    viewers: int = 0
    new_conn_share: float = 0.5
    """Share of vote requests that open a new connection (mobile clients reconnect)."""
    tls: bool = False
    tls_resumption_rate: float = 0.0
    """Share of new TLS connections that resume a session instead of a full handshake."""
    ecdsa: bool = True
    headroom: float = 0.6
    """Target utilisation of every unit at the peak."""
    viewer_ramp_s: float = 60.0
    """Viewers arrive over this many seconds at the start of a show: their connects count."""
    vote_conn_lifetime_s: float = 5.0
    """How long a vote client's connection stays open (HTTP keep-alive timeout)."""
    min_haproxy_nodes: int = 2
    """At least two, so that losing one node is not losing the show."""
    redis_replicas: int = 1
    """Replicas per Redis shard: 1 keeps a shard's votes when its primary's machine dies."""
    polls: int = 1
    """Polls taking votes at the same time: the PostgreSQL writer's rows scale with them."""
    options_per_poll: int = 8
    haproxy_instance_type: str = instances.DEFAULT_HAPROXY
    """A node is one core of this type, with that core's share of its memory."""
    haproxy_memory_gib: float | None = None
    """The type's memory, for a type lb/instances.py does not know."""
    viewer_updates_per_s: float = 10.0
    """Updates a viewer's websocket carries per second at the peak: push sends at most
    one per 100 ms (``min_interval_ms``), and the totals change all the time then."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Profile figures replaced for this plan, e.g. ``{"ingest_votes_per_s": 6000}``."""

    def __post_init__(self) -> None:
        for name in ("new_conn_share", "tls_resumption_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {v}")
        if not 0.0 < self.headroom <= 1.0:
            raise ValueError(f"headroom must be within (0, 1], got {self.headroom}")
        if self.peak_votes_per_s < 0 or self.viewers < 0:
            raise ValueError("peak_votes_per_s and viewers must not be negative")
        if self.viewer_ramp_s <= 0:
            raise ValueError("viewer_ramp_s must be positive")
        if self.redis_replicas < 0:
            raise ValueError(f"redis_replicas must not be negative, got {self.redis_replicas}")
        if self.polls < 1 or self.options_per_poll < 1:
            raise ValueError("polls and options_per_poll must be at least 1")
        if self.viewer_updates_per_s < 0:
            raise ValueError("viewer_updates_per_s must not be negative")


@dataclass(frozen=True)
class TierPlan:
    count: int
    binding: str
    """The resource that sets ``count``."""


@dataclass(frozen=True)
class CapacityPlan:
    profile: str
    haproxy_nodes: int
    ingest_processes: int
    push_processes: int
    tally_consumers: int
    partitions: int
    maxconn_per_node: int
    redis_shards: int
    redis_replicas: int
    postgres_vcpus: int
    binding: dict[str, str]
    load: dict[str, float]
    steps: list[str]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["binding"] = dict(sorted(self.binding.items()))
        d["load"] = {k: round(v, 3) for k, v in sorted(self.load.items())}
        return dict(sorted(d.items()))

    def to_table(self) -> str:
        # The units are spelled out: a bare "haproxy nodes 36 concurrent connections" was
        # read as 36 connections. The planner's HAProxy node is one core (see Profile).
        rows = [
            ("haproxy", f"{self.haproxy_nodes:,}", "nodes (1 core each)", self.binding["haproxy"]),
            (
                "",
                f"{self.maxconn_per_node:,}",
                "max connections per node",
                f"{self.load['haproxy_concurrent_conns']:,.0f} concurrent / nodes / headroom",
            ),
            ("ingest", f"{self.ingest_processes:,}", "processes", self.binding["ingest"]),
            ("push", f"{self.push_processes:,}", "processes", self.binding["push"]),
            ("tally", f"{self.tally_consumers:,}", "consumer processes", self.binding["tally"]),
            ("stream", f"{self.partitions:,}", "partitions", self.binding["partitions"]),
            (
                "redis",
                f"{self.redis_shards:,}",
                f"shards (1 core each, {self.redis_replicas} replica(s) each)",
                self.binding["redis"],
            ),
            (
                "postgres",
                f"{self.postgres_vcpus:,}",
                "vCPUs (one writer)",
                self.binding["postgres"],
            ),
        ]
        head = ("tier", "count", "unit", "binding resource (sets the count)")
        w = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
        out = [f"profile: {self.profile}", ""]
        for tier, count, unit, why in [head, *rows]:
            out.append(f"{tier:<{w[0]}}  {count:>{w[1]}}  {unit:<{w[2]}}  {why}".rstrip())
        out += ["", "arithmetic:"] + [f"  {s}" for s in self.steps]
        return "\n".join(out)


@dataclass(frozen=True)
class ConnLimit:
    """Concurrent connections one HAProxy unit (a planner node, or an instance) holds."""

    maxconn: int
    binding: str
    """What sets it: file descriptors, memory, update fan-out, or the constant."""
    steps: tuple[str, ...]
    measured: bool
    """False when the constant ``haproxy_max_conns`` stood in for a measurement."""


def conn_limit(
    p: Profile,
    *,
    memory_gib: float | None,
    reserve_gib: float = HAPROXY_MEMORY_RESERVE_GIB,
    unit: str = "node",
) -> ConnLimit:
    """The most websockets one ``unit`` holds: the lesser of its file descriptors (two
    per websocket) and its memory (``memory_gib`` less ``reserve_gib``, over HAProxy's
    and the kernel's bytes per websocket). Without a measured ``haproxy_bytes_per_conn``
    (or a memory figure), the constant ``haproxy_max_conns``.

    The update fan-out is not a term here: its CPU grows with viewers, not with held
    connections, so the planner adds it to the cores the rate needs."""
    if p.haproxy_bytes_per_conn <= 0 or memory_gib is None:
        why = (
            "no measured bytes per connection in the profile (buzzer bench lb --only websockets)"
            if p.haproxy_bytes_per_conn <= 0
            else "instance memory unknown (capacity.instance_types.<type>.memory_gib)"
        )
        return ConnLimit(
            p.haproxy_max_conns,
            "haproxy_max_conns constant",
            (
                f"connections per {unit} = {p.haproxy_max_conns:,}: the constant"
                f" haproxy_max_conns, a fallback: {why}",
            ),
            measured=False,
        )
    by_fd = (HAPROXY_FD_BUDGET - HAPROXY_FD_RESERVE) // 2
    per_conn = p.haproxy_bytes_per_conn + p.haproxy_kernel_bytes_per_conn
    usable = max(0.0, memory_gib - reserve_gib)
    by_mem = int(usable * 2**30 / per_conn)
    binding = "memory" if by_mem <= by_fd else "file descriptors"
    n = min(by_fd, by_mem)
    steps = (
        f"connections per {unit} by file descriptors = ({HAPROXY_FD_BUDGET:,} LimitNOFILE"
        f" - {HAPROXY_FD_RESERVE:,} reserve) / 2 per websocket = {by_fd:,}",
        f"connections per {unit} by memory = ({memory_gib:g} GiB - {reserve_gib:g} GiB"
        f" reserve) / ({p.haproxy_bytes_per_conn:,.0f} HAProxy"
        f" + {p.haproxy_kernel_bytes_per_conn:,.0f} kernel bytes per websocket) = {by_mem:,}",
        f"connections per {unit} = min({by_fd:,}, {by_mem:,}) = {n:,} ({binding})",
    )
    return ConnLimit(max(1, n), binding, steps, measured=True)


def node_memory_gib(instance_type: str, memory_gib: float | None = None) -> float | None:
    """One core's share of ``instance_type``'s memory (a planner node is one core)."""
    mem = memory_gib if memory_gib is not None else instances.MEMORY_GIB.get(instance_type)
    vcpus = instances.VCPUS.get(instance_type)
    if mem is None or vcpus is None:
        return None
    return mem / vcpus


def _ceil(x: float) -> int:
    # Guard against 2.0000000001 from float division turning into 3 nodes.
    return max(0, math.ceil(round(x, 6)))


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def plan(inputs: PlanInputs, profile: Profile) -> CapacityPlan:
    p = replace(profile, **inputs.overrides) if inputs.overrides else profile
    h = inputs.headroom
    steps: list[str] = [f"headroom: every unit planned at {h:.0%} of its capacity"]
    load: dict[str, float] = {}
    binding: dict[str, str] = {}

    # HAProxy: core time per second of peak, split by what each connection costs.
    votes = inputs.peak_votes_per_s
    vote_new = votes * inputs.new_conn_share
    viewer_new = inputs.viewers / inputs.viewer_ramp_s
    new = vote_new + viewer_new
    reused = votes - vote_new
    steps.append(
        f"new connections/s = {votes:,.0f} votes/s x {inputs.new_conn_share:.2f} new-conn share"
        f" + {inputs.viewers:,} viewers / {inputs.viewer_ramp_s:g} s ramp = {new:,.0f}"
    )
    steps.append(f"keep-alive requests/s = {votes:,.0f} - {vote_new:,.0f} = {reused:,.0f}")
    costs: dict[str, float] = {}
    if inputs.tls:
        full_rate = (
            p.haproxy_tls_full_ecdsa_per_s
            if inputs.ecdsa and p.haproxy_tls_full_ecdsa_per_s > 0
            else p.haproxy_tls_full_per_s
        )
        kind = "ECDSA" if inputs.ecdsa and p.haproxy_tls_full_ecdsa_per_s > 0 else "RSA-2048"
        full = new * (1 - inputs.tls_resumption_rate)
        resumed = new - full
        costs["tls_full"] = full / full_rate
        costs["tls_resumed"] = resumed / p.haproxy_tls_resumed_per_s
        steps.append(
            f"full {kind} handshakes/s = {new:,.0f} x (1 - {inputs.tls_resumption_rate:.2f})"
            f" = {full:,.0f}; / {full_rate:,.0f} per core = {costs['tls_full']:.2f} cores"
        )
        steps.append(
            f"resumed handshakes/s = {resumed:,.0f}; / {p.haproxy_tls_resumed_per_s:,.0f}"
            f" per core = {costs['tls_resumed']:.2f} cores"
        )
    else:
        costs["new_conns"] = new / p.haproxy_new_conns_per_s
        steps.append(
            f"plain new connections: {new:,.0f} / {p.haproxy_new_conns_per_s:,.0f} per core"
            f" = {costs['new_conns']:.2f} cores"
        )
    # Phones keep their TLS connection and speak h2 (alpn h2,http/1.1): their votes on
    # it cost what HAProxy measured for TLS h2 streams, not plain HTTP/1.1 keep-alive.
    ka_rate, ka_kind = p.haproxy_keepalive_req_per_s, "keep-alive requests"
    if inputs.tls and p.haproxy_h2_req_per_s > 0:
        ka_rate, ka_kind = p.haproxy_h2_req_per_s, "keep-alive requests (TLS, h2)"
    costs["keepalive"] = reused / ka_rate
    steps.append(
        f"{ka_kind}: {reused:,.0f} / {ka_rate:,.0f} per core = {costs['keepalive']:.2f} cores"
    )
    # Every update push sends to a viewer crosses HAProxy: a read from push, a write to
    # the viewer, per socket. At millions of viewers this can outweigh the handshakes.
    ups = inputs.viewer_updates_per_s
    if p.haproxy_cpu_per_conn_update > 0 and inputs.viewers and ups:
        costs["update_fanout"] = inputs.viewers * ups * p.haproxy_cpu_per_conn_update
        steps.append(
            f"update fan-out: {inputs.viewers:,} viewers x {ups:g} updates/s x"
            f" {p.haproxy_cpu_per_conn_update * 1e6:.2f} us = {costs['update_fanout']:.2f} cores"
        )
    elif inputs.viewers:
        steps.append("update fan-out not costed: no haproxy_cpu_per_conn_update in the profile")
    cores = sum(costs.values())
    by_rate = _ceil(cores / h)
    steps.append(f"haproxy nodes by rate = ceil({cores:.2f} cores / {h}) = {by_rate}")

    # What one node (one core of the instance type) holds: measured bytes and CPU per
    # websocket against its memory share and descriptors, or the constant as a fallback.
    itype = inputs.haproxy_instance_type
    vcpus = instances.VCPUS.get(itype, 1)
    limit = conn_limit(
        p,
        memory_gib=node_memory_gib(itype, inputs.haproxy_memory_gib),
        reserve_gib=HAPROXY_MEMORY_RESERVE_GIB / vcpus,
        unit=f"node (1 core of {itype})",
    )
    steps += limit.steps
    # Little's law: vote connections open per second times how long each stays open.
    concurrent = inputs.viewers + vote_new * inputs.vote_conn_lifetime_s
    by_conns = _ceil(concurrent / (limit.maxconn * h))
    steps.append(
        f"concurrent connections = {inputs.viewers:,} viewers + {vote_new:,.0f} new/s x"
        f" {inputs.vote_conn_lifetime_s:g} s = {concurrent:,.0f};"
        f" nodes = ceil({concurrent:,.0f} / ({limit.maxconn:,} x {h})) = {by_conns}"
    )
    nodes = max(by_rate, by_conns, inputs.min_haproxy_nodes)
    heaviest = max(costs, key=lambda k: costs[k])
    if nodes == inputs.min_haproxy_nodes and max(by_rate, by_conns) < nodes:
        binding["haproxy"] = f"minimum of {inputs.min_haproxy_nodes} nodes for redundancy"
    elif by_rate >= by_conns:
        binding["haproxy"] = f"connection rate ({heaviest.replace('_', ' ')})"
    else:
        binding["haproxy"] = f"concurrent connections ({limit.binding})"
    load["haproxy_cores"] = cores
    load["haproxy_concurrent_conns"] = concurrent
    load["haproxy_new_conns_per_s"] = new
    load["haproxy_conns_per_node_limit"] = limit.maxconn
    # Each node takes its share at the target utilisation; the rest is room to take a
    # failed peer's clients without refusing them.
    maxconn = min(limit.maxconn, _ceil(concurrent / nodes / h)) if nodes else 0
    maxconn = max(maxconn, 1000)
    steps.append(
        f"maxconn per node = min({limit.maxconn:,}, ceil({concurrent:,.0f} / {nodes} / {h}))"
        f" = {maxconn:,}"
    )

    ingest = max(1, _ceil(votes / (p.ingest_votes_per_s * h)))
    binding["ingest"] = "votes/s per process"
    steps.append(
        f"ingest processes = ceil({votes:,.0f} / ({p.ingest_votes_per_s:,.0f} x {h})) = {ingest}"
    )
    push = max(1, _ceil(inputs.viewers / (p.push_viewers * h)))
    binding["push"] = "viewers per process"
    steps.append(f"push processes = ceil({inputs.viewers:,} / ({p.push_viewers:,} x {h})) = {push}")
    tally = max(1, _ceil(votes / (p.tally_votes_per_s * h)))
    binding["tally"] = "votes/s per consumer"
    steps.append(
        f"tally consumers = ceil({votes:,.0f} / ({p.tally_votes_per_s:,.0f} x {h})) = {tally}"
    )
    # Redis: every vote runs vote_batch.lua and apply.lua on the shard owning its
    # partition, on that shard's one script thread: shards are cores.
    per_shard = p.redis_votes_per_s
    shards = max(1, _ceil(votes / (per_shard * h)))
    steps.append(
        f"redis shards by votes = ceil({votes:,.0f} / ({per_shard:,.0f} votes/s per shard x {h}))"
        f" = {shards}"
    )
    # One consumer owns a partition (one atomic script per slot), so partitions bound the
    # tally's parallelism; a power of two, at least 4, leaves room to add consumers. A
    # partition lives on one shard, so with several shards there are 4 per shard: the
    # shards' slot ranges are cut so each holds an equal share (infra), and the busiest
    # holds at most one more than the mean.
    spread = 4 * shards if shards > 1 else 1
    partitions = max(4, _pow2(max(tally, spread)))
    if shards > 1 and spread > tally:
        binding["partitions"] = "4 per Redis shard (even spread), power of two"
    else:
        binding["partitions"] = "one tally consumer per partition, power of two, at least 4"
    steps.append(
        f"partitions = max(4, next power of two >= max({tally} consumers,"
        f" 4 x {shards} shards)) = {partitions}"
        if shards > 1
        else f"partitions = max(4, next power of two >= {tally}) = {partitions}"
    )
    base_shards = shards
    while _ceil(partitions / shards) * votes / partitions > per_shard * h:
        shards += 1
    busiest = _ceil(partitions / shards) * votes / partitions
    if shards > base_shards:
        binding["redis"] = "votes/s of the busiest shard (partitions split unevenly)"
    else:
        binding["redis"] = "votes/s per shard (one core)"
    steps.append(
        f"busiest shard holds ceil({partitions} / {shards}) partitions = {busiest:,.0f} votes/s"
        f" <= {per_shard:,.0f} x {h}: {shards} shards, {inputs.redis_replicas} replica(s) each"
    )
    load["redis_votes_per_s"] = votes
    load["redis_busiest_shard_votes_per_s"] = busiest

    # PostgreSQL: the writer commits each partition's outbox, one commit per read; a
    # commit upserts one totals row per (poll, option) and one rate-bucket row per
    # (poll, option, second) it saw, two seconds at most in practice. So its load is
    # partitions x flushes x polls x options, not votes: votes only make batches bigger.
    commits = partitions * p.postgres_flushes_per_s
    rows_per_commit = inputs.polls * inputs.options_per_poll * 3
    rows = commits * (rows_per_commit + p.postgres_commit_rows)
    pg_vcpus = max(2, _pow2(_ceil(rows / (p.postgres_rows_per_vcpu_s * h))))
    binding["postgres"] = "writer's upserts: partitions x flushes x polls x options"
    steps.append(
        f"postgres commits/s = {partitions} partitions x {p.postgres_flushes_per_s:g} flushes/s"
        f" = {commits:,.0f}; rows per commit = {inputs.polls} poll(s) x"
        f" {inputs.options_per_poll} options x 3 (total + 2 rate buckets) = {rows_per_commit}"
    )
    steps.append(
        f"postgres vCPUs = max(2, next power of two >= {commits:,.0f} x ({rows_per_commit}"
        f" + {p.postgres_commit_rows:g} per commit) / ({p.postgres_rows_per_vcpu_s:,.0f}"
        f" rows per vCPU x {h})) = {pg_vcpus}"
    )
    load["postgres_rows_per_s"] = rows
    load["ingest_votes_per_s"] = votes

    return CapacityPlan(
        profile=p.name,
        haproxy_nodes=nodes,
        ingest_processes=ingest,
        push_processes=push,
        tally_consumers=tally,
        partitions=partitions,
        maxconn_per_node=maxconn,
        redis_shards=shards,
        redis_replicas=inputs.redis_replicas,
        postgres_vcpus=pg_vcpus,
        binding=binding,
        load=load,
        steps=steps,
    )
