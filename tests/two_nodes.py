"""Two relay nodes in one test: two in-process RelayApps, one store (a SQLite file or PostgreSQL).

``store_url`` is parametrized over SQLite and PostgreSQL: the PostgreSQL one is
a throwaway database at 127.0.0.1:5432 (``RELAY_TEST_POSTGRES`` names another
server), and the test skips with the reason when there is none. Each node has
its own config file (its own directory), the same data directory and so the
same secret key, as every node of a cluster must.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.app import RelayApp
from relay.config import load_config
from tests.postgres import throwaway_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'relay.db'}"
        return
    async with throwaway_database() as url:
        yield url


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
