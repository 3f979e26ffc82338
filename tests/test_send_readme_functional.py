"""README's send API examples, run as they are (bash, curl) against a relay with `http:` on.

The ```sh blocks of "The send API" run twice in a directory holding an
invoice.pdf: the first run queues every example's message; the second run
queues all but the one sent with an Idempotency-Key. The invoice arrives
byte for byte, by multipart and by JSON alike.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import shutil
import subprocess
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import base_config, smtp_upstream

README = Path(__file__).parent.parent / "README.md"
TOKEN = "readme-token-0123456789abcdef"
INVOICE = b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


def readme_examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## The send API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def run(example: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", example],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_readme_send_examples_run_and_the_idempotent_one_sends_once(
    tmp_path: Path, make_sink: Any, start_relay: Any
) -> None:
    examples = readme_examples()
    assert examples, "README's send API section lost its examples"
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("primary", sink.port)])
    config["sites"][0]["id"] = "product-page-1"
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["http"] = {"host": "127.0.0.1", "port": 0}
    relay = await start_relay(config)
    work = tmp_path / "work"
    work.mkdir()
    (work / "invoice.pdf").write_bytes(INVOICE)
    env = {
        **os.environ,
        "RELAY": f"http://127.0.0.1:{relay.app.admin_port}",
        "RELAY_HTTP": f"http://127.0.0.1:{relay.app.http_port}",
        "RELAY_ADMIN_TOKEN": TOKEN,
    }
    for example in examples:
        result = await asyncio.to_thread(run, example, work, env)
        assert result.returncode == 0, f"{example}\n--- stderr:\n{result.stderr}"
    first = len(await sink.handler.wait_for(3))
    assert first == 3
    # Again: a new key is made (another name), the idempotent line queues nothing.
    again = [e.replace('{"name": "backend"}', '{"name": "backend-2"}') for e in examples]
    for example in again:
        result = await asyncio.to_thread(run, example, work, env)
        assert result.returncode == 0, f"{example}\n--- stderr:\n{result.stderr}"
    await sink.handler.wait_for(5)
    await asyncio.sleep(0.3)
    assert len(sink.messages) == 5

    subjects: dict[str, list[EmailMessage]] = {}
    for received in sink.messages:
        message = email.message_from_bytes(received.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        subjects.setdefault(str(message["Subject"]), []).append(message)
    assert sorted((s, len(m)) for s, m in subjects.items()) == [
        ("Invoice 2026-0042", 1),
        ("Invoice 2026-0042 (JSON)", 2),
        ("Your order 1042", 2),
    ]
    for subject in ("Invoice 2026-0042", "Invoice 2026-0042 (JSON)"):
        for message in subjects[subject]:
            (part,) = message.iter_attachments()
            assert isinstance(part, EmailMessage)
            assert part.get_filename() == "invoice.pdf"
            assert part.get_content_type() == "application/pdf"
            assert part.get_content() == INVOICE
    order = next(r for r in sink.messages if b"Your order 1042" in r.content)
    assert sorted(order.rcpt_tos) == [
        "archive@example.com",
        "customer@example.org",
        "sales@example.com",
    ]
    assert b"archive@example.com" not in order.content
