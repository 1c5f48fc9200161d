"""The stream contract: every message that crosses a Redis stream, and the key names.

Producers (ingest, the admin API) and consumers (tally, push, loadtest) import this
module and nothing else to talk to each other. Keys that must live in one Redis
Cluster slot share a hash tag per partition: ``buzzer:{p3}:...``.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field
from typing import Literal

import msgspec

TALLY_GROUP = "tally"
"""Consumer group of the tally on every partition's votes stream."""

PG_GROUP = "pgwriter"
"""Consumer group of the PostgreSQL writer on every partition's applied stream."""

ARCHIVE_GROUP = "archiver"
"""Consumer group of the vote archiver on every partition's votes stream."""

ENTRY_CLOSE = b"c"

StreamId = tuple[int, int]
"""A stream entry id as (milliseconds, sequence): compared as numbers, never as text."""


def parse_id(raw: bytes | str) -> StreamId:
    s = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


PollState = Literal["draft", "open", "closed"]


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key name, under one prefix so that tests and shows never collide."""

    prefix: str = "buzzer"
    partitions: int = 4
    tags: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """Each partition's tag (:meth:`tag`), the start of every key of the partition."""

    def __post_init__(self) -> None:
        # Every key of a vote starts with its partition's tag: built once, not per vote.
        tags = tuple(f"{self.prefix}:{{p{p}}}" for p in range(self.partitions))
        object.__setattr__(self, "tags", tags)

    def partition_of(self, device_id: str) -> int:
        # By device, so that one device's retries, its one-vote marker and its rate
        # counter all live in one slot and one atomic script can check them together.
        # A vote of a device bound to an account passes the account's hash instead
        # (scripts.vote_partition), so that all the account's devices share one slot.
        return zlib.crc32(device_id.encode()) % self.partitions

    def tag(self, p: int) -> str:
        return self.tags[p]

    def votes(self, p: int) -> str:
        return f"{self.tag(p)}:votes"

    def applied(self, p: int) -> str:
        """Outbox of applied deltas, read by the PostgreSQL writer."""
        return f"{self.tag(p)}:applied"

    def state(self, p: int, poll: str) -> str:
        return f"{self.tag(p)}:state:{poll}"

    def dedupe(self, p: int, poll: str, device: str, vote_id: str) -> str:
        return f"{self.tag(p)}:vid:{poll}:{device}:{vote_id}"

    def device_votes(self, p: int, poll: str, device: str) -> str:
        return f"{self.tag(p)}:dv:{poll}:{device}"

    def account_votes(self, p: int, poll: str, account_key: str) -> str:
        # In the partition of the account (not of one of its devices), so that the one
        # script that sees all the account's votes can count them (Keys.partition_of).
        return f"{self.tag(p)}:av:{poll}:{account_key}"

    def rate(self, p: int, device: str) -> str:
        return f"{self.tag(p)}:rate:{device}"

    def counts(self, p: int, poll: str) -> str:
        return f"{self.tag(p)}:counts:{poll}"

    def second(self, p: int, poll: str, sec: int) -> str:
        return f"{self.tag(p)}:sec:{poll}:{sec}"

    def version(self, p: int, poll: str) -> str:
        return f"{self.tag(p)}:ver:{poll}"

    def closed(self, p: int, poll: str) -> str:
        """Set once the tally applied this partition's close marker for the poll."""
        return f"{self.tag(p)}:closed:{poll}"

    def poll_def(self, poll: str) -> str:
        """The poll's definition (JSON of :class:`PollDef`), read by ingest and push."""
        return f"{self.prefix}:poll:{poll}"

    def publish_gate(self, poll: str) -> str:
        return f"{self.prefix}:pubgate:{poll}"

    @property
    def updates(self) -> str:
        """Fan-out stream of :class:`TallyUpdate`, read by every push process."""
        return f"{self.prefix}:updates"

    @property
    def polls_index(self) -> str:
        """Set of poll ids known to Redis (for reconciliation)."""
        return f"{self.prefix}:polls"


class OptionDef(msgspec.Struct, frozen=True):
    key: str
    label: str


class PollDef(msgspec.Struct, frozen=True, dict=True):
    """What ingest needs to validate a vote without asking PostgreSQL.

    ``dict=True`` only makes room for :attr:`option_keys`' cache (the encoding is the
    same): ingest checks every vote's option against the same cached definition."""

    id: str
    show_id: str
    title: str
    options: list[OptionDef]
    max_votes_per_device: int | None
    """None: unlimited (buzz, clap), still rate-limited per device."""
    max_count: int
    """Largest tap count one request may carry; 1 means no batching."""
    state: PollState
    final: bool = False
    """Set once every partition's close marker is applied and PostgreSQL froze the result."""
    max_votes_per_account: int | None = None
    """Votes all devices of one viewer account may cast; None: no account limit. Devices
    without an account cannot vote in a poll that has one."""

    @functools.cached_property
    def option_keys(self) -> frozenset[str]:
        return frozenset(o.key for o in self.options)


class VoteEntry(msgspec.Struct, frozen=True):
    """One accepted vote, as appended to ``votes(p)``."""

    poll: str
    option: str
    count: int
    device: str
    vote_id: str
    client_ts: int
    """Client's clock, ms since the epoch (0 when the app sent none)."""
    recv_ts: int
    """Server's clock when ingest received it, ms since the epoch."""

    def values(self) -> tuple[str | int, ...]:
        """The field values in the order of :meth:`to_fields`, after the type (``t``),
        which is the same for every vote: what the vote path sends per vote."""
        return (
            self.poll,
            self.option,
            self.count,
            self.device,
            self.vote_id,
            self.client_ts,
            self.recv_ts,
        )

    def to_fields(self) -> dict[str, str | int]:
        return {
            "t": "v",
            "poll": self.poll,
            "opt": self.option,
            "n": self.count,
            "dev": self.device,
            "vid": self.vote_id,
            "cts": self.client_ts,
            "rts": self.recv_ts,
        }

    @classmethod
    def from_fields(cls, f: dict[bytes, bytes]) -> VoteEntry:
        return cls(
            poll=f[b"poll"].decode(),
            option=f[b"opt"].decode(),
            count=int(f[b"n"]),
            device=f[b"dev"].decode(),
            vote_id=f[b"vid"].decode(),
            client_ts=int(f[b"cts"]),
            recv_ts=int(f[b"rts"]),
        )


class CloseEntry(msgspec.Struct, frozen=True):
    """Marks the point in one partition after which the poll takes no vote."""

    poll: str

    def to_fields(self) -> dict[str, str | int]:
        return {"t": "c", "poll": self.poll}

    @classmethod
    def from_fields(cls, f: dict[bytes, bytes]) -> CloseEntry:
        return cls(poll=f[b"poll"].decode())


def decode_entry(f: dict[bytes, bytes]) -> VoteEntry | CloseEntry:
    if f.get(b"t") == ENTRY_CLOSE:
        return CloseEntry.from_fields(f)
    return VoteEntry.from_fields(f)


class Delta(msgspec.Struct, frozen=True, array_like=True):
    poll: str
    option: str
    sec: int
    """Second (epoch) of the votes' receive time, for the rate history."""
    count: int


class AppliedBatch(msgspec.Struct, frozen=True):
    """Outbox entry written atomically with the live counters (field ``d``, JSON).

    ``deltas`` are the votes this batch newly applied; ``closes`` the polls whose
    close marker it applied on this partition.
    """

    deltas: list[Delta]
    closes: list[str]


class TallyUpdate(msgspec.Struct, frozen=True):
    """A poll's live state, published by tally at most every 100 ms per poll.

    Field ``d`` of an entry in ``Keys.updates`` holds it as JSON, so push can
    forward the bytes to websocket clients without re-encoding them.
    """

    poll: str
    version: int
    """Grows with every applied batch that touched the poll."""
    counts: dict[str, int]
    total: int
    rates: dict[str, float]
    """Votes per second per option over the last 10 s."""
    state: PollState
    final: bool
    ts: int
    """Publication time, ms since the epoch."""
    type: str = "update"


_update_encoder = msgspec.json.Encoder()
_update_decoder = msgspec.json.Decoder(TallyUpdate)
_batch_decoder = msgspec.json.Decoder(AppliedBatch)


def encode_update(u: TallyUpdate) -> bytes:
    return _update_encoder.encode(u)


def decode_update(data: bytes) -> TallyUpdate:
    return _update_decoder.decode(data)


def decode_applied(data: bytes) -> AppliedBatch:
    return _batch_decoder.decode(data)


_polldef_decoder = msgspec.json.Decoder(PollDef)


def encode_polldef(p: PollDef) -> bytes:
    return _update_encoder.encode(p)


def decode_polldef(data: bytes) -> PollDef:
    return _polldef_decoder.decode(data)
