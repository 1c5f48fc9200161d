"""The fan-out hub: latest state per poll, and a shared writer that puts each update's
websocket frame on every subscriber's transport. Updates come from the process's one
stream reader (``reader.py``); connection slots are ``admission.py``'s.

Why no task and no queue per client: an update is encoded into one frame once and the
same bytes object is written to every socket, so a client costs a few small objects.
A client whose unsent bytes in this process go over ``send_buffer_limit_bytes`` is not
written to; it keeps at most one pending update per poll (the newest replaces the older,
counted as coalesced) and is disconnected with 4008 once it stays over the limit for
``slow_client_timeout_s``. Transports are never paused (their high-water mark is set far
above that limit), so a write never waits and one slow socket cannot hold up the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from aiohttp import web
from redis.asyncio import Redis

from services.common.live import load_polldef, read_live
from services.common.messages import Keys, PollDef, TallyUpdate, decode_update
from services.push import protocol
from services.push.admission import Admission
from services.push.cycles import drop_tracebacks
from services.push.protocol import Close

log = logging.getLogger("buzzer.push")

Key = tuple[int, bool]
"""Ordering of a poll's states: (version, final); a final state beats its unfinal twin."""

NONE_KEY: Key = (-1, False)


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented websocket text frame (server to client, RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def catch_up_slack(most: float, interval: float, fanout: float) -> float:
    """How early a broadcast may go to catch up: up to ``most``, but no more than the time
    a fan-out leaves free in an interval. A push whose fan-outs fill the interval has
    nothing to catch up with; sent early, back to back, its broadcasts would only queue
    behind each other in the viewers' sockets. Measured with a fixed half-interval slack
    instead (bench push --against): better in every pair at 8,000 viewers, p99 worse in
    every pair at 9,000."""
    return min(most, max(0.0, interval - fanout))


class Sub:
    """What one client was last sent for one poll."""

    __slots__ = ("key", "sent_at")

    def __init__(self, key: Key, sent_at: float) -> None:
        self.key = key
        self.sent_at = sent_at


class Client:
    __slots__ = (
        "blocked_since",
        "closing",
        "idle_since",
        "ip",
        "msg_count",
        "msg_window",
        "pending",
        "subs",
        "transport",
        "ws",
    )

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport, ip: str, now: float
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.ip = ip
        self.subs: dict[str, Sub] = {}
        self.pending: dict[str, tuple[Key, bytes]] | None = None
        """Per poll, the newest update not yet written (None while nothing waits)."""
        self.blocked_since: float | None = None
        self.closing = False
        self.idle_since: float | None = now
        self.msg_window = now
        self.msg_count = 0

    def write(self, frame: bytes) -> None:
        if not self.closing and not self.transport.is_closing():
            self.transport.write(frame)

    def send(self, msg: object) -> None:
        self.write(text_frame(protocol.encoder.encode(msg)))


class PollState:
    __slots__ = (
        "frame",
        "inflight",
        "key",
        "live",
        "live_at",
        "next_slot",
        "pdef",
        "snap",
        "subscribers",
        "timer",
        "touched",
        "update",
    )

    def __init__(self, now: float) -> None:
        self.key: Key = NONE_KEY
        self.update: TallyUpdate | None = None
        """Newest state from the updates stream, and its frame (bytes shared by all sends)."""
        self.frame = b""
        self.next_slot = -1e9
        """When the next broadcast is due if updates come no faster than one per interval."""
        self.timer: asyncio.TimerHandle | None = None
        self.subscribers: dict[Client, Sub] = {}
        self.pdef: PollDef | None = None
        self.live: TallyUpdate | None = None
        """Newest state read from the counters for a snapshot, at loop time ``live_at``."""
        self.live_at = -1e9
        self.inflight: asyncio.Task[None] | None = None
        self.snap: tuple[TallyUpdate, bytes] | None = None
        self.touched = now


@dataclass
class Snap:
    key: Key
    frame: bytes
    version: int


@dataclass
class HubStats:
    received: int = 0
    stale: int = 0
    undecodable: int = 0
    broadcasts: int = 0
    sent: int = 0
    coalesced: int = 0
    """Updates a slow client never got because a newer one replaced them."""
    snapshots_read: int = 0
    disconnects: dict[str, int] = field(default_factory=dict)
    last_fanout_s: float = 0.0


class Hub:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        min_interval_s: float = 0.1,
        send_buffer_limit: int = 64 * 1024,
        slow_client_timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
        close_timeout_s: float = 3.0,
        snapshot_cache_s: float = 0.25,
        max_connections: int = 10_000,
        max_connections_per_ip: int = 5000,
        max_connections_per_device: int = 5,
        on_fanout: Callable[[float, float], None] | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.min_interval = min_interval_s
        self.slack = min_interval_s / 2
        """The most a broadcast may go before its slot, to catch up a late one."""
        self.limit = send_buffer_limit
        self.slow_timeout = slow_client_timeout_s
        self.idle_timeout = idle_timeout_s
        self.close_timeout = close_timeout_s
        self.snapshot_cache = snapshot_cache_s
        self.admission = Admission(
            max_connections, max_connections_per_ip, max_connections_per_device
        )
        self.on_fanout = on_fanout
        """Called with (seconds to write to all, seconds since the update's publication)."""
        self.clients: set[Client] = set()
        self.polls: dict[str, PollState] = {}
        self.deferred: set[Client] = set()
        self.stats = HubStats()
        self._closers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    # -- connections -------------------------------------------------------------------

    def register(self, ws: web.WebSocketResponse, transport: asyncio.Transport, ip: str) -> Client:
        # Writes never wait: aiohttp's writer only waits for a drain while the protocol is
        # paused, and our own limit stops writing long before this high-water mark.
        transport.set_write_buffer_limits(high=max(4 * self.limit, 1 << 20))
        client = Client(ws, transport, ip, self._loop.time())
        self.clients.add(client)
        return client

    def unregister(self, client: Client) -> None:
        self.clients.discard(client)
        self._detach_all(client)

    def _detach_all(self, client: Client) -> None:
        client.closing = True
        self.deferred.discard(client)
        for poll in client.subs:
            ps = self.polls.get(poll)
            if ps is not None:
                ps.subscribers.pop(client, None)
        client.subs.clear()
        client.pending = None

    def kick(self, client: Client, code: Close, reason: str) -> None:
        """Close a client from outside its handler; its handler then unregisters it."""
        if client.closing:
            return
        self.stats.disconnects[code.name] = self.stats.disconnects.get(code.name, 0) + 1
        # Still counted as connected until its handler returns and unregisters it.
        self._detach_all(client)
        task = asyncio.create_task(self._close(client, code, reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close(self, client: Client, code: Close, reason: str) -> None:
        transport = client.transport
        try:
            async with asyncio.timeout(self.close_timeout):
                await client.ws.close(code=code, message=reason.encode()[:123])
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            # A peer that never reads would keep a closing transport (and its buffer) forever.
            if not transport.is_closing():
                transport.close()
            self._loop.call_later(self.close_timeout, transport.abort)
            # A close that timed out or failed keeps its error, traceback and all.
            drop_tracebacks(client.ws)

    async def shutdown(self, grace_s: float) -> int:
        """Close every client with 1001 and wait (bounded) for the close handshakes."""
        self.admission.accepting = False
        clients = [c for c in self.clients if not c.closing]
        for c in clients:
            self.kick(c, Close.GOING_AWAY, "server shutdown")
        if self._closers:
            await asyncio.wait(list(self._closers), timeout=grace_s)
        return len(clients)

    def allow_message(self, client: Client, per_s: int) -> bool:
        now = self._loop.time()
        if now - client.msg_window > 2.0:
            client.msg_window = now
            client.msg_count = 0
        client.msg_count += 1
        return client.msg_count <= 2 * per_s

    # -- subscriptions -----------------------------------------------------------------

    def _poll(self, poll: str) -> PollState:
        ps = self.polls.get(poll)
        if ps is None:
            ps = self.polls[poll] = PollState(self._loop.time())
        return ps

    async def snapshot(self, poll: str) -> Snap | None:
        """The newest state known for a poll, or None if the poll does not exist.

        Reads the live counters at most once per ``snapshot_cache`` per poll, shared by
        every subscriber asking meanwhile (a mass reconnect costs one read per poll).
        """
        ps = self._poll(poll)
        ps.touched = self._loop.time()
        if self._loop.time() - ps.live_at > self.snapshot_cache:
            if ps.inflight is None:
                ps.inflight = asyncio.create_task(self._read_live(ps, poll))
            await asyncio.shield(ps.inflight)
        if ps.pdef is None:
            return None
        best = ps.live
        if ps.update is not None and (best is None or ps.key > (best.version, best.final)):
            best = ps.update
        assert best is not None
        if ps.snap is None or ps.snap[0] is not best:
            snap = protocol.Snapshot(
                poll=best.poll,
                version=best.version,
                counts=best.counts,
                total=best.total,
                rates=best.rates,
                state=best.state,
                final=best.final,
                ts=best.ts,
                type="snapshot",
                title=ps.pdef.title,
                options=ps.pdef.options,
            )
            ps.snap = (best, text_frame(protocol.encoder.encode(snap)))
        return Snap(key=(best.version, best.final), frame=ps.snap[1], version=best.version)

    async def _read_live(self, ps: PollState, poll: str) -> None:
        try:
            pdef = await load_polldef(self.redis, self.keys, poll)
            ps.pdef = pdef
            ps.live = await read_live(self.redis, self.keys, pdef) if pdef is not None else None
            ps.live_at = self._loop.time()
            self.stats.snapshots_read += 1
        finally:
            ps.inflight = None

    def attach(self, client: Client, poll: str, since: int | None, snap: Snap) -> None:
        """Answer a subscribe: a snapshot if newer than ``since``, else ``uptodate``."""
        if client.closing:
            return
        now = self._loop.time()
        since_key: Key = (since, False) if since is not None else NONE_KEY
        if snap.key > since_key:
            client.write(snap.frame)
            key = snap.key
        else:
            client.send(protocol.UpToDate(poll=poll, version=max(since or 0, snap.version)))
            key = since_key
        self.stats.sent += 1
        sub = Sub(key, now)
        client.subs[poll] = sub
        client.idle_since = None
        ps = self._poll(poll)
        ps.subscribers[client] = sub
        if ps.key > key:
            # Published while the snapshot was being read: it follows at the next slot.
            self._defer(client, poll, ps.key, ps.frame)

    def detach(self, client: Client, poll: str) -> None:
        client.subs.pop(poll, None)
        if client.pending is not None:
            client.pending.pop(poll, None)
        ps = self.polls.get(poll)
        if ps is not None:
            ps.subscribers.pop(client, None)
        if not client.subs:
            client.idle_since = self._loop.time()

    # -- fan-out -----------------------------------------------------------------------

    def on_update(self, data: bytes) -> None:
        try:
            u = decode_update(data)
        except msgspec.DecodeError as exc:
            self.stats.undecodable += 1
            log.warning("undecodable update", extra={"error": str(exc)[:200]})
            return
        self.stats.received += 1
        ps = self._poll(u.poll)
        key = (u.version, u.final)
        if key <= ps.key:
            self.stats.stale += 1
            return
        if u.type != "update" or b'"type"' not in data:
            data = protocol.encoder.encode(msgspec.structs.replace(u, type="update"))
        ps.key = key
        ps.update = u
        ps.frame = text_frame(data)
        ps.touched = now = self._loop.time()
        # Spacing by the schedule, not by the last broadcast's clock (GCRA): a broadcast
        # late by L (a collection, a long fan-out) leaves the next slot where it was, so
        # an update on time goes out on arrival once L is within the slack, and a longer
        # lag shrinks by the slack at every update. Spaced from the late broadcast
        # instead, every later one would inherit L: with updates as fast as the interval
        # (tally's 10/s), lags only ever added up (bench push, delay growing every slice).
        # On average there is still at most one broadcast per interval, and two are never
        # closer than the interval less the slack.
        due = ps.next_slot - catch_up_slack(self.slack, self.min_interval, self.stats.last_fanout_s)
        if now >= due:
            self._broadcast(ps)
        elif ps.timer is None:
            # Faster than 10/s (a second tally, a replay): the newest goes out at the next slot.
            ps.timer = self._loop.call_at(due, self._broadcast, ps)

    def _broadcast(self, ps: PollState) -> None:
        started = time.perf_counter()
        now = self._loop.time()
        if ps.timer is not None:
            # Sent now by an update that found the slot free before the timer ran: the
            # timer would only send the same state again, early for the next slot.
            ps.timer.cancel()
            ps.timer = None
        ps.next_slot = max(ps.next_slot, now) + self.min_interval
        # No per-client spacing check here: a poll's broadcasts already come at most one
        # per min_interval, and a client's own clock (sent_at) would drift later each time it
        # was deferred, turning one late write into a permanent 100 ms lag.
        key, frame, limit = ps.key, ps.frame, self.limit
        poll = ps.update.poll if ps.update is not None else ""
        sent = 0
        for c, sub in ps.subscribers.items():
            if key <= sub.key or c.closing:
                continue
            t = c.transport
            if (c.pending is not None and poll in c.pending) or t.get_write_buffer_size() > limit:
                self._defer(c, poll, key, frame)
                continue
            if not t.is_closing():
                t.write(frame)
                sub.key = key
                sub.sent_at = now
                sent += 1
        self.stats.broadcasts += 1
        self.stats.sent += sent
        elapsed = time.perf_counter() - started
        self.stats.last_fanout_s = elapsed
        if self.on_fanout is not None and ps.update is not None:
            self.on_fanout(elapsed, max(0.0, time.time() - ps.update.ts / 1000))

    def _defer(self, c: Client, poll: str, key: Key, frame: bytes) -> None:
        if c.pending is None:
            c.pending = {}
        elif poll in c.pending:
            self.stats.coalesced += 1
        c.pending[poll] = (key, frame)
        self.deferred.add(c)

    def flush(self) -> None:
        """Write pending updates to clients that drained; disconnect those stuck too long."""
        now = self._loop.time()
        for c in list(self.deferred):
            if c.closing or c.pending is None:
                self.deferred.discard(c)
                continue
            if c.transport.get_write_buffer_size() > self.limit:
                if c.blocked_since is None:
                    c.blocked_since = now
                elif now - c.blocked_since > self.slow_timeout:
                    log.info(
                        "slow client disconnected", extra={"ip": c.ip, "pending": len(c.pending)}
                    )
                    self.kick(c, Close.TOO_SLOW, "too slow: updates not read in time")
                continue
            c.blocked_since = None
            for poll, (key, frame) in list(c.pending.items()):
                sub = c.subs.get(poll)
                if sub is None or key <= sub.key:
                    del c.pending[poll]
                elif now - sub.sent_at >= self.min_interval:
                    c.write(frame)
                    sub.key = key
                    sub.sent_at = now
                    self.stats.sent += 1
                    del c.pending[poll]
            if not c.pending:
                c.pending = None
                self.deferred.discard(c)

    def sweep(self, poll_ttl_s: float = 600.0) -> None:
        """Idle sockets out; forget polls nobody followed for a while."""
        now = self._loop.time()
        for c in list(self.clients):
            if (
                not c.closing
                and c.idle_since is not None
                and now - c.idle_since > self.idle_timeout
            ):
                self.kick(c, Close.IDLE, "idle: no subscription")
        for poll, ps in list(self.polls.items()):
            if not ps.subscribers and ps.inflight is None and now - ps.touched > poll_ttl_s:
                if ps.timer is not None:
                    ps.timer.cancel()
                del self.polls[poll]

    def max_send_buffer(self) -> int:
        """Largest unsent byte count among clients waiting (only they can be large)."""
        return max(
            (c.transport.get_write_buffer_size() for c in self.deferred if not c.closing), default=0
        )

    def max_pending(self) -> int:
        return max((len(c.pending) for c in self.deferred if c.pending), default=0)

    def subscriptions(self) -> int:
        return sum(len(ps.subscribers) for ps in self.polls.values())

    # -- the housekeeping loop ----------------------------------------------------------

    async def housekeeping(self, tick_s: float = 0.02, sweep_s: float = 1.0) -> None:
        last_sweep = self._loop.time()
        while True:
            await asyncio.sleep(tick_s)
            if self.deferred:
                self.flush()
            if self._loop.time() - last_sweep >= sweep_s:
                last_sweep = self._loop.time()
                self.sweep()

    async def stop(self) -> None:
        for ps in self.polls.values():
            if ps.timer is not None:
                ps.timer.cancel()
            if ps.inflight is not None:
                ps.inflight.cancel()
        for t in list(self._closers):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._closers, return_exceptions=True)
