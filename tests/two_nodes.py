"""Two relay nodes in one test: two in-process RelayApps, one store (a SQLite file or PostgreSQL).

``store_url`` is parametrized over SQLite and PostgreSQL: the PostgreSQL one is
a throwaway database at 127.0.0.1:5432 (``RELAY_TEST_POSTGRES`` names another
server), and the test skips with the reason when there is none. Each node has
its own config file (its own directory), the same data directory and so the
same secret key, as every node of a cluster must.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import create_async_engine

from relay.app import RelayApp
from relay.config import load_config

POSTGRES_ADMIN_URL = os.environ.get(
    "RELAY_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'relay.db'}"
        return
    admin = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    try:
        async with admin.connect() as connection:
            await connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except (OSError, sa.exc.SQLAlchemyError) as error:
        await admin.dispose()
        pytest.skip(f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {type(error).__name__}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


StartNode = Callable[[str, dict[str, Any]], Any]


@pytest.fixture
async def start_node(tmp_path: Path, store_url: str) -> AsyncIterator[StartNode]:
    """start_node(name, config) -> a started RelayApp on ``store_url`` whose file is
    <tmp>/<name>/config.yaml; stopped before the store goes."""
    apps: list[RelayApp] = []

    async def start(name: str, config: dict[str, Any]) -> RelayApp:
        config = {**config, "store": {"url": store_url}}
        path = tmp_path / name / "config.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        app = RelayApp(load_config(path))
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in reversed(apps):
        await app.stop()
