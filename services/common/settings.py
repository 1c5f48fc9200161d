"""Typed settings, read once from the environment and passed into each app factory."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

import tiers
from services.common.attest import Policy
from services.common.messages import Keys
from services.common.oidc import OidcIssuer
from services.common.redisconn import SOCKET_TIMEOUT_S

LONGEST_WAIT_MS = int(SOCKET_TIMEOUT_S * 1000) - 1000
"""The longest a Redis call may be told to wait (``WAIT``, a blocking read): a second
short of the clients' socket timeout, which would cut it off as a timeout and close the
connection, every time."""


class CommonSettings(BaseSettings):
    """What every process shares. Env: ``REDIS_URL``, ``DATABASE_URL``, ``BUZZER_*``."""

    model_config = SettingsConfigDict(
        env_prefix="BUZZER_", extra="ignore", frozen=True, populate_by_name=True
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "BUZZER_REDIS_URL")
    )
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/buzzer"),
        validation_alias=AliasChoices("DATABASE_URL", "BUZZER_DATABASE_URL"),
    )
    key_prefix: str = "buzzer"
    partitions: int = Field(4, ge=1, le=1024)
    host: str = "127.0.0.1"
    reuse_port: bool = False
    """SO_REUSEPORT: several processes of one tier share a port on a node (EC2 user data)."""
    log_level: str = "INFO"
    shutdown_timeout_s: float = 10.0
    ack_replicas: int = Field(0, ge=0, le=5)
    """Replicas that must hold a write before it counts as done: ingest's 202 (one WAIT
    per pipeline per node), the tally's copy of an outbox entry into PostgreSQL."""
    ack_timeout_ms: int = Field(500, ge=1, le=LONGEST_WAIT_MS)
    """How long WAIT may take; past it votes get 503 (the client retries) and the
    PostgreSQL writer retries its batch."""

    hash_accounts: bool = False
    """Privacy: reports (``buzzer audit devices``) show viewer accounts hashed."""

    def keys(self) -> Keys:
        return Keys(prefix=self.key_prefix, partitions=self.partitions)


class IngestSettings(CommonSettings):
    """The public vote API process (gateway edge + ingest append path)."""

    port: int = tiers.INGEST.port
    token_secret: SecretStr = Field(default_factory=lambda: _ephemeral("BUZZER_TOKEN_SECRET"))
    token_secrets_previous: list[SecretStr] = Field(default_factory=list)
    """Older signing secrets still accepted for verification (rotation overlap)."""
    token_ttl_s: int = 30 * 24 * 3600
    token_audience: str = "buzzer-vote"
    admin_token: SecretStr = Field(default_factory=lambda: _ephemeral("BUZZER_ADMIN_TOKEN"))
    """The operator named ``admin``."""
    operator_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    """More named operators (JSON object name -> token); their names go in the audit log."""
    operator_tokens_file: Path | None = None
    """A JSON file of name -> token (mode 600), re-read when it changes: rotation needs no
    restart."""
    device_rate_per_s: int = 20
    oidc_issuers: list[OidcIssuer] = Field(default_factory=list)
    """ID token issuers whose accounts ``POST /v1/devices`` accepts (JSON list of
    ``{"issuer", "audience", "jwks_url"}``)."""
    require_account: bool = False
    """Refuse to register a device without a verified ID token (docs/guarantees.md)."""
    jwks_cache_s: float = Field(3600.0, gt=0)
    jwks_min_refetch_s: float = Field(30.0, ge=0)
    """An unknown key id refetches an issuer's keys at most this often."""
    attestation_policy: dict[str, Policy] = Field(default_factory=dict)
    """Per platform (``ios``, ``android``): ``required``, ``optional`` or ``off``; a
    platform not named is refused once any is named (services/common/attest.py)."""
    app_attest_app_id: str = ""
    """Team id and bundle id of the iOS app, ``ABCDE12345.tv.example.vote``."""
    app_attest_root: Path | None = None
    """PEM of Apple's App Attest root CA (a test passes its own)."""
    app_attest_allow_development: bool = False
    registrations_per_attested_key: int = Field(3, ge=0)
    """Devices one attested app instance may register per ``registration_window_s``."""
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    """Peers whose X-Forwarded-For names the client (HAProxy): the source a device's
    registration is recorded with."""
    registrations_per_account: int = Field(10, ge=0)
    """Devices one account may register per ``registration_window_s``; 0: no limit."""
    registration_window_s: int = Field(24 * 3600, ge=1)
    max_backlog: int = 200_000
    """Unapplied stream entries over all partitions above which votes get 503."""
    max_inflight: int = 20_000
    """Votes waiting for Redis in this process above which votes get 503."""
    max_pipelines: int = 4
    """Pipelines to Redis in flight at once; votes arriving meanwhile wait for the next."""
    flush_at_votes: int = Field(32, ge=1)
    """Votes queued that go to Redis at once when no pipeline is in flight, rather than
    at the end of the event-loop turn: Redis runs them while ingest reads the requests
    behind them (services/ingest/appender.py)."""
    dedupe_ttl_s: int = 6 * 3600
    max_body_bytes: int = 4096
    poll_cache_ttl_s: float = 1.0
    access_log: bool = False


class TallySettings(CommonSettings):
    """The tally process: stream consumer, PostgreSQL writer, publisher, trimmer."""

    port: int = Field(
        tiers.TALLY.port, validation_alias=AliasChoices("BUZZER_TALLY_PORT", "BUZZER_PORT")
    )
    consumer: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """Name in both consumer groups; a fixed name lets a restart resume its own pending entries."""
    batch_size: int = Field(1000, ge=1, le=10_000)
    block_ms: int = Field(50, ge=1, le=LONGEST_WAIT_MS)
    claim_idle_ms: int = Field(5000, ge=100)
    """Pending entries idle this long belong to a consumer presumed dead."""
    recover_interval_s: float = 1.0
    """How often each partition re-reads its own pending entries and claims dead ones."""
    publish_interval_ms: int = Field(100, ge=10)
    trim_interval_s: float = 1.0
    metrics_interval_s: float = 1.0
    reconcile_interval_s: float = 3.0
    sec_ttl_s: int = 120
    """Lifetime of the per-second live counters (the rate window is 10 s)."""
    consumer_gc_idle_ms: int = 3_600_000
    """Consumers with nothing pending and idle this long are removed from the groups."""
    pg_pool_size: int = 4
    pg_timeout_s: float = 30.0
    """Upper bound on one PostgreSQL write transaction; a hung database fails the batch."""


def _ephemeral(name: str) -> SecretStr:
    # Localhost default: a random secret per process, so nothing secret lives in the
    # repo. Processes that must agree (several ingest workers) get it from `buzzer up`.
    import logging

    logging.getLogger("buzzer.settings").warning(
        "setting not configured, using a random one for this process", extra={"setting": name}
    )
    return SecretStr(secrets.token_urlsafe(32))


class PushSettings(CommonSettings):
    """The websocket fan-out process (``buzzer serve push``): live counts to viewers."""

    port: int = tiers.PUSH.port
    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """This process's field in the viewers hash."""
    admin_token: SecretStr = Field(default_factory=lambda: _ephemeral("BUZZER_ADMIN_TOKEN"))
    """For ``GET /v1/ops``; the same token as the admin API."""
    operator_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    """The same named operators as the admin API's, also for ``GET /v1/ops``."""
    operator_tokens_file: Path | None = None
    admin_api_base: str = ""
    """Where the console finds the admin API; empty: same origin (through HAProxy)."""
    require_token: bool = False
    """Viewers need no device token by default (phones and the studio screen)."""
    token_secret: SecretStr = Field(default_factory=lambda: _ephemeral("BUZZER_TOKEN_SECRET"))
    token_secrets_previous: list[SecretStr] = Field(default_factory=list)
    token_audience: str = "buzzer-vote"
    max_connections: int = Field(10_000, ge=1)
    max_connections_per_ip: int = Field(5000, ge=1)
    """Sockets from one address. Thousands of phones share one behind carrier-grade NAT,
    so this only stops one machine hoarding slots; docs/operations.md says how to size it."""
    max_connections_per_device: int = Field(5, ge=1)
    """Sockets with one device token (a phone, its tabs and a reconnect overlapping)."""
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    """Peers whose X-Forwarded-For names the client (HAProxy); anyone else is the client."""
    allowed_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed besides the page's own host; ``*`` allows any."""
    max_subscriptions: int = Field(16, ge=1)
    """Polls one socket may follow."""
    max_message_bytes: int = 4096
    client_messages_per_s: int = 10
    """Average over a 2 s window; bursts of reconnecting subscribes stay well inside."""
    min_interval_ms: int = 100
    """Per poll: a client gets at most one update this often (10/s)."""
    send_buffer_limit_bytes: int = 64 * 1024
    """Unsent bytes in this process for one client above which it only keeps the latest state."""
    slow_client_timeout_s: float = 10.0
    """A client over its send-buffer limit this long is disconnected (4008)."""
    socket_sndbuf_bytes: int = 0
    """Kernel send buffer per websocket (SO_SNDBUF); 0 keeps the kernel's autotuning."""
    heartbeat_s: float = 20.0
    """Longest ping period: each socket pings at its own, between half of this and this
    (push/handlers.heartbeat_period); no pong within half of it closes the socket."""
    idle_timeout_s: float = 60.0
    """A socket that follows no poll this long is closed (4000)."""
    close_timeout_s: float = 3.0
    snapshot_cache_ms: int = 250
    """Snapshots read from Redis are shared this long: a mass reconnect costs one read per poll."""
    viewers_interval_s: float = 1.0
    xread_block_ms: int = Field(1000, ge=1, le=LONGEST_WAIT_MS)


def refused(exc: ValidationError) -> str | None:
    """What to tell the operator when the environment got a settings class wrong: one
    line per setting, named as it is set (``BUZZER_ACK_TIMEOUT_MS``), without the value,
    which may be a secret. None when ``exc`` is not about settings."""
    if not exc.title.endswith("Settings"):
        return None
    lines = ["settings refused"]
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        env = name if name.isupper() else f"BUZZER_{name.upper()}"
        lines.append(f"  {env}: {err['msg']}")
    return "\n".join(lines)
