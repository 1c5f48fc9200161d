"""The tally's Prometheus metrics and the counts of its shutdown summary."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("buzzer.tally")


@dataclass
class Stats:
    """Totals since start, logged once in the ``tally stopped`` line."""

    applied: int = 0
    batches: int = 0
    closes: int = 0
    deferred: int = 0
    claimed: int = 0
    dropped: int = 0
    pg_batches: int = 0
    pg_entries: int = 0
    pg_deferred: int = 0
    pg_errors: int = 0
    finalized: int = 0
    published: int = 0
    trimmed: int = 0
    archived: int = 0
    archive_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TallyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "buzzer_tally_batch_size",
            "Entries per batch read from a stream",
            ["stream"],
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=registry,
        )
        self.applied = Counter(
            "buzzer_tally_applied_entries_total",
            "Vote entries counted into the live counters",
            registry=registry,
        )
        self.deferred = Counter(
            "buzzer_tally_deferred_closes_total",
            "Close markers left pending because earlier entries were still pending",
            ["stream"],
            registry=registry,
        )
        self.claimed = Counter(
            "buzzer_tally_claimed_entries_total",
            "Entries taken over from consumers presumed dead",
            ["stream"],
            registry=registry,
        )
        self.dropped = Counter(
            "buzzer_tally_dropped_entries_total",
            "Entries acknowledged without effect: deleted from the stream or undecodable",
            ["stream"],
            registry=registry,
        )
        self.lag = Gauge(
            "buzzer_stream_lag",
            "Entries not yet delivered to the group",
            ["stream", "partition"],
            registry=registry,
        )
        self.pending = Gauge(
            "buzzer_stream_pending",
            "Entries delivered to the group and not yet acknowledged",
            ["stream", "partition"],
            registry=registry,
        )
        self.pg_latency = Histogram(
            "buzzer_tally_pg_write_seconds",
            "Duration of one PostgreSQL write transaction",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=registry,
        )
        self.pg_errors = Counter(
            "buzzer_tally_pg_errors_total",
            "PostgreSQL write batches that failed and will be retried",
            registry=registry,
        )
        self.published = Counter(
            "buzzer_tally_published_total",
            "Tally updates appended to the updates stream",
            registry=registry,
        )
        self.vote_to_publish = Histogram(
            "buzzer_tally_vote_to_publish_seconds",
            "From the oldest vote's receipt at ingest to its poll's update being published",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.finalized = Counter(
            "buzzer_tally_finalized_polls_total",
            "Polls whose result this process froze in PostgreSQL",
            registry=registry,
        )
        self.trimmed = Counter(
            "buzzer_tally_trimmed_entries_total",
            "Stream entries removed by the trimmer",
            ["stream"],
            registry=registry,
        )

    def recovered(self, stats: Stats, stream: str, p: int, claimed: int, dropped: int) -> None:
        """Count what a recovery pass took over from idle consumers, and log it."""
        if dropped:
            self.dropped.labels(stream).inc(dropped)
            stats.dropped += dropped
        if claimed:
            self.claimed.labels(stream).inc(claimed)
            stats.claimed += claimed
            log.info(
                "claimed pending entries of an idle consumer",
                extra={"partition": p, "entries": claimed, "stream": stream},
            )
