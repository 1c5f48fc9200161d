"""The record of each registered device (its account and source address), written by
ingest at registration and read by ``buzzer audit devices``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.messages import Keys


def device_key(keys: Keys, device: str) -> str:
    # Outside the partitions: read one by one (HGETALL), never from a partition's script.
    return f"{keys.prefix}:device:{device}"


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    account: str
    """The viewer account; "" for an anonymous device."""
    source: str
    registered_at: int


async def device_records(
    redis: Redis, keys: Keys, devices: Iterable[str], chunk: int = 1000
) -> dict[str, DeviceRecord]:
    """The records of those of ``devices`` that have one (a record lives as long as the
    device's token)."""
    out: dict[str, DeviceRecord] = {}
    batch = list(devices)
    for i in range(0, len(batch), chunk):
        part = batch[i : i + chunk]
        pipe = redis.pipeline(transaction=False)
        for d in part:
            pipe.hmget(device_key(keys, d), ["account", "source", "at"])
        for d, (acc, src, at) in zip(part, await pipe.execute(), strict=True):
            if src is None:
                continue
            out[d] = DeviceRecord(account=_text(acc), source=_text(src), registered_at=int(at or 0))
    return out


def _text(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else v
