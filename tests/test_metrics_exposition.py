"""The metrics contract: README's table matches the registry, and /metrics passes promtool.

README.md ("### Metrics") lists every metric with its labels; the registry built by
``relay.metrics.Metrics`` is compared with it both ways, so a metric added to one
place and not the other fails here. A live relay's /metrics output, after mail has
gone through it, is then checked by ``promtool check metrics`` (format and lint)
and by prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import Metrics
from tests.conftest import SITE_PASSWORD, RunningRelay, base_config, smtp_upstream

README = Path(__file__).resolve().parent.parent / "README.md"

# Sample labels prometheus_client adds itself: not part of a metric's own label set.
BUILTIN_LABELS = {"le", "quantile"}


# -- README's table


def readme_metrics(text: str) -> dict[str, tuple[str, ...]]:
    """{metric name: label names} from the table under "### Metrics"."""
    match = re.search(r"^### Metrics[ \t]*\n(.*?)(?=^#{1,3} |\Z)", text, re.M | re.S)
    assert match, 'README.md has no "### Metrics" section'
    rows: dict[str, tuple[str, ...]] = {}
    for line in match.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) < 2:
            continue
        name = re.fullmatch(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cells[0])
        if name is None:  # the header row and the |---| rule
            continue
        assert name.group(1) not in rows, f"README lists {name.group(1)} twice"
        rows[name.group(1)] = tuple(re.findall(r"`([^`]+)`", cells[1]))
    assert rows, 'README.md\'s "### Metrics" section has no table rows'
    return rows


# -- The registry


def exposed_name(family_name: str, family_type: str) -> str:
    """The name Prometheus sees: prometheus_client reports counters without ``_total``."""
    suffix = {"counter": "_total", "info": "_info"}.get(family_type, "")
    return family_name if family_name.endswith(suffix) else family_name + suffix


def registry_metrics(metrics: Metrics) -> dict[str, tuple[str, ...]]:
    """{exposed metric name: label names} for everything on the relay's registry."""
    registry = metrics.registry
    # Labelled metrics without children have no samples, so label names come from the
    # metric objects (prometheus_client keeps them in _labelnames), keyed like collect().
    declared: dict[str, tuple[str, ...]] = {}
    for collector in list(registry._collector_to_names):
        name, labelnames = (
            getattr(collector, "_name", None),
            getattr(collector, "_labelnames", None),
        )
        if name is not None and labelnames is not None:
            declared[name] = tuple(labelnames)
    found: dict[str, tuple[str, ...]] = {}
    for family in registry.collect():
        name = exposed_name(family.name, family.type)
        if family.name in declared:
            found[name] = declared[family.name]
        else:  # a custom collector: what its samples carry is all there is to go on
            labels = {k for s in family.samples for k in s.labels} - BUILTIN_LABELS
            found[name] = tuple(sorted(labels))
    return found


def test_readme_lists_every_metric_with_its_labels() -> None:
    documented = readme_metrics(README.read_text(encoding="utf-8"))
    registered = registry_metrics(Metrics())

    problems = [
        f"{name} is registered (labels {list(labels)}) but missing from README's metrics table"
        for name, labels in sorted(registered.items())
        if name not in documented
    ]
    problems += [
        f"{name} is in README's metrics table but not registered in relay/metrics.py"
        for name in sorted(documented)
        if name not in registered
    ]
    for name in sorted(documented.keys() & registered.keys()):
        readme_labels, code_labels = set(documented[name]), set(registered[name])
        if readme_labels != code_labels:
            problems.append(
                f"{name}: labels differ: README {sorted(readme_labels)}, "
                f"registry {sorted(code_labels)} "
                f"(only in README: {sorted(readme_labels - code_labels)}, "
                f"only in registry: {sorted(code_labels - readme_labels)})"
            )
    assert not problems, "README.md ### Metrics and relay.metrics disagree:\n" + "\n".join(problems)


# -- A live relay's /metrics


SENDER = "orders@shop.example.com"
GONE = "gone@example.org"


def message(recipient: str) -> bytes:
    return (f"From: <{SENDER}>\r\nTo: {recipient}\r\nSubject: metrics\r\n\r\nhello\r\n").encode()


async def fetch_metrics(relay: RunningRelay) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{relay.app.admin_port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


def delivery_outcomes(text: str) -> set[str]:
    return {
        sample.labels.get("outcome", "")
        for family in text_string_to_metric_families(text)
        if family.name == "relay_deliveries"
        for sample in family.samples
    }


@pytest.fixture
async def live_metrics(
    tmp_path: Path, make_sink: Any, start_relay: Any, cert_files: Any, client_tls: Any
) -> str:
    """/metrics of a relay that delivered one message, failed one (550) and refused some SMTP."""
    sink = await make_sink(replies={"rcpt": {GONE: "550 5.1.1 No such user"}})
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    relay: RunningRelay = await start_relay(config)

    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, start_tls=True, tls_context=client_tls, timeout=5
    )
    async with smtp:
        await smtp.login("shop", SITE_PASSWORD)
        for recipient in ("a@example.org", GONE):
            await smtp.sendmail(SENDER, [recipient], message(recipient))
        # A sender the site may not use: a refusal at ingress (relay_smtp_rejections_total).
        with pytest.raises(aiosmtplib.SMTPResponseException):
            await smtp.sendmail("someone@elsewhere.example", ["a@example.org"], message("a"))
    # A wrong password, on its own connection and source address (relay_auth_failures_total).
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=relay.port,
        start_tls=True,
        tls_context=client_tls,
        source_address=("127.0.0.2", 0),
        timeout=5,
    )
    async with smtp:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await smtp.login("shop", "wrong-password")

    await sink.handler.wait_for(1)
    async with asyncio.timeout(15):
        while True:
            text = await fetch_metrics(relay)
            if {"sent", "failed"} <= delivery_outcomes(text):
                return text
            await asyncio.sleep(0.1)


def promtool_or_skip() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian/Ubuntu: apt-get install prometheus)")
    return promtool


async def test_live_metrics_pass_promtool(live_metrics: str) -> None:
    promtool = promtool_or_skip()
    process = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate(live_metrics.encode())
    said = (stdout + stderr).decode(errors="replace").strip()
    # Lint problems come out as "name: problem" lines; some versions still exit 0.
    assert process.returncode == 0, f"promtool check metrics exited {process.returncode}:\n{said}"
    assert said == "", f"promtool check metrics reported problems:\n{said}"


async def test_live_metrics_have_every_readme_family(live_metrics: str) -> None:
    documented = readme_metrics(README.read_text(encoding="utf-8"))
    families = {
        exposed_name(family.name, family.type): family
        for family in text_string_to_metric_families(live_metrics)
    }

    problems = []
    for name, labels in sorted(documented.items()):
        family = families.get(name)
        if family is None:
            problems.append(f"{name} (in README) is not in /metrics")
            continue
        if not family.documentation:
            problems.append(f"{name} has no HELP text")
        if family.type == "unknown":
            problems.append(f"{name} has no TYPE")
        for sample in family.samples:
            sample_labels = set(sample.labels) - BUILTIN_LABELS
            if sample_labels != set(labels):
                problems.append(
                    f"{name}: sample {sample.name}{sample.labels} has labels "
                    f"{sorted(sample_labels)}, README says {sorted(labels)}"
                )
                break
    assert not problems, "\n".join(problems)

    # The traffic above must have produced labelled samples, or promtool saw little.
    for name in (
        "relay_messages_accepted_total",
        "relay_deliveries_total",
        "relay_attempt_duration_seconds",
        "relay_smtp_rejections_total",
        "relay_auth_failures_total",
        "relay_queue_depth",
    ):
        if name in families:
            assert families[name].samples, f"{name} has no samples after sending mail"
