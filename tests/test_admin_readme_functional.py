"""README's admin API examples, run as they are against a real `relay serve`.

Each ```sh block of the "Admin API" section runs in bash with `set -e`
(every curl has -f, so an HTTP error fails it). Then the objects those
examples created must survive a restart of the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import base_config, smtp_upstream, write_config
from tests.test_process_functional import RelayProcess, send

README = Path(__file__).parent.parent / "README.md"
TOKEN = "readme-token-0123456789abcdef"
ADMIN = re.compile(r"admin [\d.]+:(\d+)")


def readme_examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Admin API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def get(url: str) -> Any:
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.load(response)


@pytest.mark.slow
async def test_readme_api_examples_run_and_their_objects_survive_a_restart(
    tmp_path: Path, make_sink: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = readme_examples()
    assert len(examples) >= 3, "README's Admin API section lost its examples"
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("primary", sink.port)])
    config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
    config["admin"]["tokens"] = [{"name": "ops", "token_env": "RELAY_ADMIN_TOKEN"}]
    config["health"] = {"check_interval_seconds": 0}
    config["http"] = {"host": "127.0.0.1", "port": 0}  # campaigns' unsubscribe links
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", TOKEN)
    path = write_config(tmp_path, config)

    relay = RelayProcess(path)
    try:
        port = await asyncio.to_thread(relay.wait_ready)
        admin = int(next(m.group(1) for line in relay.lines if (m := ADMIN.search(line))))
        queued = await asyncio.to_thread(send, port, "an invoice")
        message_id = queued.rsplit(" ", 1)[1]
        await sink.handler.wait_for(1)
        env = {
            **os.environ,
            "RELAY": f"http://127.0.0.1:{admin}",
            "ID": message_id,
        }
        for example in examples:
            result = await asyncio.to_thread(
                subprocess.run,
                ["bash", "-euo", "pipefail", "-c", example],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, f"{example}\n--- stderr:\n{result.stderr}"
        await sink.handler.wait_for(2)  # the test message sent through primary
        assert relay.log_has("reloaded")
    finally:
        assert await asyncio.to_thread(relay.stop, signal.SIGTERM) == 0

    again = RelayProcess(path)
    try:
        await asyncio.to_thread(again.wait_ready)
        admin = int(next(m.group(1) for line in again.lines if (m := ADMIN.search(line))))
        base = f"http://127.0.0.1:{admin}/api/v1"
        mailgun = await asyncio.to_thread(get, f"{base}/upstreams/mailgun")
        assert mailgun["managed_by"] == "api"
        assert mailgun["has_password"] is True
        assert mailgun["active"] is False
        assert mailgun["daily_limit"] is None
        site = await asyncio.to_thread(get, f"{base}/sites/landing")
        assert site["credentials"] == []  # the example removed the one it made
        receipt = await asyncio.to_thread(get, f"{base}/templates/receipt")
        assert receipt["managed_by"] == "api"
        assert receipt["subject"] == "Order {{ order.id }} received"
        domain = await asyncio.to_thread(get, f"{base}/domains/example.org")
        assert [k["selector"] for k in domain["keys"]] == ["relay1"]
        audit = await asyncio.to_thread(get, f"{base}/audit?page_size=100")
        assert {"create", "update", "deactivate", "delete", "reload", "test"} <= {
            e["action"] for e in audit["items"]
        }
        assert "the-mailgun-password" not in json.dumps(audit)
        campaigns = await asyncio.to_thread(get, f"{base}/campaigns?site=landing")
        assert [c["name"] for c in campaigns["items"]] == ["December news"]
    finally:
        assert await asyncio.to_thread(again.stop, signal.SIGTERM) == 0
