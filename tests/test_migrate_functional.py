"""Nodes that start together on a fresh store take turns migrating it (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from relay.store import create_engine, migrate
from tests.two_nodes import store_url

__all__ = ["store_url"]  # fixture


async def test_two_nodes_migrating_at_once_both_succeed(store_url: str) -> None:
    engines = [create_engine(store_url) for _ in range(2)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        async with engines[0].connect() as connection:
            versions = await connection.scalar(sa.text("SELECT count(*) FROM alembic_version"))
        assert versions == 1
    finally:
        for engine in engines:
            await engine.dispose()
