"""Throwaway PostgreSQL databases for the benchmarks (created by migrating them,
``services.common.db.migrate``)."""

from __future__ import annotations


async def drop_database(server: str, name: str) -> None:
    """Drop database ``name`` of the server of DSN ``server``, sessions and all."""
    import asyncpg

    admin = await asyncpg.connect(server.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
