"""A throwaway PostgreSQL database for a test, or a skip saying why there is none.

The server is the one at 127.0.0.1:5432 (``RELAY_TEST_POSTGRES`` names another
admin URL); every test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

ADMIN_URL = os.environ.get(
    "RELAY_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


@asynccontextmanager
async def throwaway_database(prefix: str = "relay_test") -> AsyncIterator[str]:
    """The URL of a new, empty database; skips the test when PostgreSQL is absent."""
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        async with admin.connect() as connection:
            await connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except (OSError, sa.exc.SQLAlchemyError) as error:
        await admin.dispose()
        pytest.skip(f"no PostgreSQL at {ADMIN_URL}: {type(error).__name__}")
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
