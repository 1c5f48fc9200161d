"""The Lua scripts that enforce the stream contract, loaded once per Redis client."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def _source(name: str) -> str:
    return resources.files(__package__).joinpath("lua", name).read_text()


@dataclass(frozen=True, slots=True)
class Scripts:
    vote: AsyncScript
    close: AsyncScript
    apply: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        # register_script only hashes locally; EVALSHA falls back to loading on NOSCRIPT,
        # which also covers a Redis that restarted empty.
        return cls(
            vote=redis.register_script(_source("vote.lua")),
            close=redis.register_script(_source("close.lua")),
            apply=redis.register_script(_source("apply.lua")),
        )
