"""Policy hooks through a real relay: SMTP on loopback, aiosmtpd sinks as upstreams.

Every hook point answers accept, reject and tempfail as a sync and as an async
hook, and the client sees the hook's own reply; a hook that raises or runs past
the timeout gives 451 and a log line naming it; on_data's headers arrive and a
relay-owned one is refused; on_route reorders and drops and says so in the
attempt's route text; a changed module takes effect on reload while an open
session goes on; the two examples in examples/ do what they say.
"""

from __future__ import annotations

import asyncio
import signal
import smtplib
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import yaml

from relay.app import RelayApp
from relay.cli import main as relay_main
from relay.config import ConfigError, load_config
from relay.core.model import MessageStatus
from tests.conftest import (
    SITE_PASSWORD,
    RunningRelay,
    Sink,
    base_config,
    smtp_upstream,
    write_config,
)
from tests.test_delivery_functional import (
    FINAL,
    delivery_pass,
    plaintext_listener,
    submit,
)
from tests.test_process_functional import RelayProcess
from tests.test_send_api_functional import Api, send_config

KINDS = ["def", "async def"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FAILED_451 = (451, "4.3.0 Local policy check failed; try again later")
SENDER = "orders@shop.example.com"
MESSAGE = b"From: <orders@shop.example.com>\r\nTo: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def policy_config(
    tmp_path: Path, upstreams: list[dict[str, Any]], module: Path | str, timeout: float = 0.5
) -> dict[str, Any]:
    config = plaintext_listener(base_config(tmp_path, upstreams))
    config["policy"] = {"module": str(module), "timeout_seconds": timeout}
    return config


def write_module(tmp_path: Path, source: str, kind: str = "def") -> Path:
    path = tmp_path / "site_policy.py"
    path.write_text(textwrap.dedent(source).replace("HOOK ", f"{kind} "))
    return path


async def session(relay: RunningRelay) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False, timeout=10)
    await client.connect()
    await client.login("shop", SITE_PASSWORD)
    return client


async def command(client: aiosmtplib.SMTP, *words: str) -> tuple[int, str]:
    response = await client.execute_command(*(w.encode() for w in words))
    return response.code, response.message


async def greeting(port: int) -> tuple[bytes, bytes]:
    """The first line a new connection gets, and what follows until the relay closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return line, rest


async def arrival(sink: Sink, recipient: str, seconds: float = 10.0) -> bytes:
    """The content of the first message for ``recipient`` the sink received."""
    async with asyncio.timeout(seconds):
        while True:
            sink.handler.arrived.clear()
            for message in sink.messages:
                if recipient in message.rcpt_tos:
                    return message.content
            await sink.handler.arrived.wait()


def logged(caplog: pytest.LogCaptureFixture, *parts: str) -> bool:
    return any(all(p in r.getMessage() for p in parts) for r in caplog.records)


# -- on_connect


CONNECT = """
    import os
    from relay.policy import Reject, SmtpReply, TempFail

    HOOK on_connect(facts):
        mode = os.environ["POLICY_TEST_MODE"]
        if mode == "reject":
            text = f"5.7.1 No mail from {facts.client_ip} on {facts.listener}"
            return Reject(SmtpReply(554, text))
        if mode == "tempfail":
            return TempFail(SmtpReply(421, "4.7.0 Come back later"))
        if mode == "raise":
            raise RuntimeError("connect bug")
        return None
"""


@pytest.mark.parametrize("kind", KINDS)
async def test_on_connect_answers_before_the_greeting(
    tmp_path: Path,
    make_sink: Any,
    start_relay: Any,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = await make_sink()
    module = write_module(tmp_path, CONNECT, kind)
    relay = await start_relay(policy_config(tmp_path, [smtp_upstream("s", sink.port)], module))

    monkeypatch.setenv("POLICY_TEST_MODE", "reject")
    assert await greeting(relay.port) == (
        b"554 5.7.1 No mail from 127.0.0.1 on submission\r\n",
        b"",
    )
    monkeypatch.setenv("POLICY_TEST_MODE", "tempfail")
    assert await greeting(relay.port) == (b"421 4.7.0 Come back later\r\n", b"")
    monkeypatch.setenv("POLICY_TEST_MODE", "raise")
    assert await greeting(relay.port) == (
        b"%d %s\r\n" % (FAILED_451[0], FAILED_451[1].encode()),
        b"",
    )
    assert logged(caplog, "on_connect failed", "RuntimeError: connect bug")

    monkeypatch.setenv("POLICY_TEST_MODE", "accept")
    await submit(relay, ["a@example.org"], MESSAGE)
    await arrival(sink, "a@example.org")


# -- on_mail


MAIL = """
    from relay.policy import Accept, Reject, SmtpReply, TempFail

    HOOK on_mail(facts):
        if facts.sender.startswith("blocked@"):
            return Reject(SmtpReply(550, f"5.7.1 {facts.sender} blocked for site "
                                         f"{facts.site_id} user {facts.username}"))
        if facts.sender.startswith("later@"):
            return TempFail(SmtpReply(450, "4.7.1 Try later, says policy"))
        return Accept()
"""


@pytest.mark.parametrize("kind", KINDS)
async def test_on_mail_verdicts(
    tmp_path: Path, make_sink: Any, start_relay: Any, kind: str
) -> None:
    sink = await make_sink()
    module = write_module(tmp_path, MAIL, kind)
    relay = await start_relay(policy_config(tmp_path, [smtp_upstream("s", sink.port)], module))

    client = await session(relay)
    try:
        assert await command(client, "MAIL", "FROM:<blocked@shop.example.com>") == (
            550,
            "5.7.1 blocked@shop.example.com blocked for site shop user shop",
        )
        assert await command(client, "MAIL", "FROM:<later@shop.example.com>") == (
            450,
            "4.7.1 Try later, says policy",
        )
        await client.sendmail(SENDER, ["a@example.org"], MESSAGE)
    finally:
        await client.quit()
    await arrival(sink, "a@example.org")


# -- on_rcpt


RCPT = """
    from relay.policy import Reject, SmtpReply, TempFail

    HOOK on_rcpt(facts):
        if facts.recipient.endswith("@nope.example"):
            return Reject(SmtpReply(550, "5.7.1 Not to nope.example"))
        if facts.recipient.endswith("@later.example"):
            return TempFail(SmtpReply(451, "4.7.1 Not now"))
        if len(facts.recipients) >= 2:
            return Reject(SmtpReply(550, "5.5.3 Two at most, have " + ",".join(facts.recipients)))
        return None
"""


@pytest.mark.parametrize("kind", KINDS)
async def test_on_rcpt_verdicts(
    tmp_path: Path, make_sink: Any, start_relay: Any, kind: str
) -> None:
    sink = await make_sink()
    module = write_module(tmp_path, RCPT, kind)
    relay = await start_relay(policy_config(tmp_path, [smtp_upstream("s", sink.port)], module))

    client = await session(relay)
    try:
        assert (await command(client, "MAIL", f"FROM:<{SENDER}>"))[0] == 250
        assert await command(client, "RCPT", "TO:<a@nope.example>") == (
            550,
            "5.7.1 Not to nope.example",
        )
        assert await command(client, "RCPT", "TO:<b@later.example>") == (451, "4.7.1 Not now")
        assert (await command(client, "RCPT", "TO:<c@ok.example>"))[0] == 250
        assert (await command(client, "RCPT", "TO:<d@ok.example>"))[0] == 250
        assert await command(client, "RCPT", "TO:<e@ok.example>") == (
            550,
            "5.5.3 Two at most, have c@ok.example,d@ok.example",
        )
        await client.data(MESSAGE)
    finally:
        await client.quit()
    await arrival(sink, "c@ok.example")
    assert sink.messages[0].rcpt_tos == ["c@ok.example", "d@ok.example"]


# -- on_data


DATA = """
    from relay.policy import AddHeaders, Reject, SmtpReply, TempFail

    HOOK on_data(facts):
        subject = facts.header("subject")
        if subject == "spam":
            return Reject(SmtpReply(554, f"5.7.1 No spam ({facts.size} bytes)"))
        if subject == "later":
            return TempFail(SmtpReply(451, "4.7.1 Later"))
        if subject == "forge":
            return AddHeaders([("Received", "from evil.example")])
        checked = f"{facts.via} {facts.site_id} rcpts={len(facts.recipients)} subject={subject}"
        return AddHeaders([("X-Policy", checked)])
"""


def with_subject(subject: str) -> bytes:
    return MESSAGE.replace(b"Subject: hi", b"Subject: " + subject.encode())


@pytest.mark.parametrize("kind", KINDS)
async def test_on_data_adds_headers_and_refuses(
    tmp_path: Path,
    make_sink: Any,
    start_relay: Any,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = await make_sink()
    module = write_module(tmp_path, DATA, kind)
    relay = await start_relay(policy_config(tmp_path, [smtp_upstream("s", sink.port)], module))

    for subject, expected in [
        ("spam", (554, f"5.7.1 No spam ({len(with_subject('spam'))} bytes)")),
        ("later", (451, "4.7.1 Later")),
        ("forge", FAILED_451),
    ]:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await submit(relay, ["a@example.org"], with_subject(subject))
        assert (refused.value.code, refused.value.message) == expected
    assert logged(caplog, "on_data failed", "Received is the relay's own header")

    await submit(relay, ["b@example.org"], MESSAGE)
    content = await arrival(sink, "b@example.org")
    header, _, body = content.partition(b"\r\n\r\n")
    assert b"\r\nX-Policy: smtp shop rcpts=1 subject=hi" in header
    assert header.startswith(b"Received: from ")  # the relay's own, one only
    assert header.count(b"Received:") == 1
    assert body == b"hello\r\n"


async def test_on_data_sees_the_send_api_too(
    tmp_path: Path, make_sink: Any, start_relay: Any
) -> None:
    sink = await make_sink()
    config = send_config(tmp_path, sink.port)
    config["policy"] = {"module": str(write_module(tmp_path, DATA, "async def"))}
    relay = await start_relay(config)
    async with aiohttp.ClientSession() as http:
        api = Api(relay, http)
        status, answer, _ = await api.send(
            {"to": ["a@example.org"], "subject": "spam", "text": "x"}
        )
        assert status == 422 and answer["error"]["problems"][0].startswith("5.7.1 No spam (")
        status, answer, _ = await api.send({"to": ["b@example.org"], "subject": "hi", "text": "x"})
        assert status == 202, answer
    content = await arrival(sink, "b@example.org")
    assert b"\r\nX-Policy: api shop rcpts=1 subject=hi\r\n" in content


# -- Failures: a raise or a timeout is 451 and a log line naming the hook.


FAILING = """
    import asyncio
    import time
    from relay.policy import Accept

    HOOK on_mail(facts):
        if facts.sender.startswith("boom@"):
            raise RuntimeError("policy bug")
        if facts.sender.startswith("slow@"):
            SLEEP
        return Accept()
"""


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hook_that_raises_or_times_out_answers_451(
    tmp_path: Path,
    make_sink: Any,
    start_relay: Any,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = await make_sink()
    sleep = "await asyncio.sleep(5)" if kind == "async def" else "time.sleep(1.0)"
    module = write_module(tmp_path, FAILING.replace("SLEEP", sleep), kind)
    relay = await start_relay(
        policy_config(tmp_path, [smtp_upstream("s", sink.port)], module, timeout=0.3)
    )

    client = await session(relay)
    try:
        assert await command(client, "MAIL", "FROM:<boom@shop.example.com>") == FAILED_451
        started = time.monotonic()
        assert await command(client, "MAIL", "FROM:<slow@shop.example.com>") == FAILED_451
        assert time.monotonic() - started < 0.9  # answered at the timeout, not after the sleep
        await client.sendmail(SENDER, ["a@example.org"], MESSAGE)  # the session goes on
    finally:
        await client.quit()
    await arrival(sink, "a@example.org")
    assert logged(caplog, "site_policy.py on_mail failed", "RuntimeError: policy bug")
    assert logged(caplog, "site_policy.py on_mail failed", "no answer within 0.3 s")
    metrics = relay.app.metrics.render().decode()
    assert 'relay_policy_hook_failures_total{hook="on_mail",reason="exception"} 1.0' in metrics
    assert 'relay_policy_hook_failures_total{hook="on_mail",reason="timeout"} 1.0' in metrics


# -- on_route


ROUTE = """
    from relay.policy import RouteChoice

    HOOK on_route(facts):
        names = [u.name for u in facts.upstreams]
        to = facts.recipients[0]
        if to.startswith("reorder@"):
            return RouteChoice(list(reversed(names)), f"reversed {'+'.join(names)}")
        if to.startswith("drop@"):
            return RouteChoice(["second", "ghost"], "only second")
        if to.startswith("raise@"):
            raise ValueError("route bug")
        return None
"""


@pytest.mark.parametrize("kind", KINDS)
async def test_on_route_reorders_drops_and_says_why(
    tmp_path: Path,
    make_sink: Any,
    start_relay: Any,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = await make_sink(), await make_sink()
    upstreams = [smtp_upstream("first", first.port), smtp_upstream("second", second.port)]
    module = write_module(tmp_path, ROUTE, kind)
    relay = await start_relay(policy_config(tmp_path, upstreams, module))

    routes = {}
    for to in ("reorder@example.org", "drop@example.org", "raise@example.org", "keep@x.org"):
        message_id = await submit(relay, [to], MESSAGE)
        detail = await delivery_pass(relay, message_id, FINAL)
        assert detail.status is MessageStatus.SENT
        [attempt] = detail.attempts
        routes[to.split("@")[0]] = (attempt.upstream, attempt.route)

    assert routes["reorder"] == (
        "second",
        "priority: try second, first; policy: reversed first+second",
    )
    assert routes["drop"] == (
        "second",
        "priority: try second; skipped first: dropped by policy; "
        "policy: only second (ignored, not candidates: ghost)",
    )
    assert routes["raise"] == (
        "first",
        "priority: try first, second; "
        "policy: on_route failed (see the log); the relay's route kept",
    )
    assert routes["keep"] == ("first", "priority: try first, second")
    assert logged(caplog, "on_route failed (message", "ValueError: route bug")


# -- Reload


RELOADED = """
    from relay.policy import Reject, SmtpReply

    def on_mail(facts):
        return Reject(SmtpReply(550, "5.7.1 VERSION"))
"""


async def test_reload_swaps_the_module_and_open_sessions_go_on(
    tmp_path: Path, make_sink: Any, start_relay: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sink = await make_sink()
    module = tmp_path / "site_policy.py"
    module.write_text(textwrap.dedent(RELOADED.replace("VERSION", "first version")))
    relay = await start_relay(policy_config(tmp_path, [smtp_upstream("s", sink.port)], module))

    client = await session(relay)  # opened before the reload
    try:
        assert await command(client, "MAIL", f"FROM:<{SENDER}>") == (550, "5.7.1 first version")
        module.write_text(textwrap.dedent(RELOADED.replace("VERSION", "v2")))  # same second
        result = relay.app.reload()  # what SIGHUP and POST /api/v1/reload call
        assert result.problems == []
        assert await command(client, "MAIL", f"FROM:<{SENDER}>") == (550, "5.7.1 v2")

        module.write_text("def on_mail(facts)\n    return None\n")  # a syntax error
        result = relay.app.reload()
        assert len(result.problems) == 1
        assert result.problems[0].startswith("policy.module: cannot load ")
        assert "SyntaxError" in result.problems[0] and "line 1" in result.problems[0]
        assert logged(caplog, "reload refused", "policy.module")
        assert await command(client, "MAIL", f"FROM:<{SENDER}>") == (550, "5.7.1 v2")  # kept

        module.write_text("def on_rcpt(facts):\n    return None\n")  # fixed: no on_mail now
        assert relay.app.reload().problems == []
        await client.sendmail(SENDER, ["a@example.org"], MESSAGE)
    finally:
        await client.quit()
    await arrival(sink, "a@example.org")


async def test_a_module_that_does_not_load_is_a_config_error_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = tmp_path / "site_policy.py"
    module.write_text("import no_such_module_here\n")
    path = tmp_path / "config.yaml"
    config = policy_config(tmp_path, [smtp_upstream("s", 25)], module)
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as error:
        RelayApp(load_config(path))
    assert error.value.problems == [
        f"policy.module: cannot load {module}: ModuleNotFoundError: "
        "No module named 'no_such_module_here'"
    ]
    assert relay_main(["check-config", "-c", str(path)]) == 2
    assert "policy.module: cannot load" in capsys.readouterr().err


# -- The examples


async def test_example_quiet_hours(
    tmp_path: Path, make_sink: Any, start_relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = await make_sink()
    monkeypatch.setenv("QUIET_SITES", "shop")
    monkeypatch.setenv("QUIET_TZ", "UTC")
    monkeypatch.setenv("QUIET_HOURS", "0-24")  # all day
    module = EXAMPLES / "policy_quiet_hours.py"
    relay = await start_relay(policy_config(tmp_path, [smtp_upstream("s", sink.port)], module))

    client = await session(relay)
    try:
        assert (await command(client, "MAIL", f"FROM:<{SENDER}>"))[0] == 250
        assert await command(client, "RCPT", "TO:<bob@gmail.com>") == (
            451,
            "4.7.0 Quiet hours 00:00-24:00 UTC for free-mail recipients; try again later",
        )
        assert (await command(client, "RCPT", "TO:<bob@example.org>"))[0] == 250
        await command(client, "RSET")

        hour = time.gmtime().tm_hour  # a window that is over for at least two hours
        monkeypatch.setenv("QUIET_HOURS", f"{(hour + 3) % 24}-{(hour + 4) % 24}")
        assert relay.app.reload().problems == []
        await client.sendmail(SENDER, ["bob@gmail.com"], MESSAGE)
    finally:
        await client.quit()
    await arrival(sink, "bob@gmail.com")


async def test_example_cheapest_unbounced(tmp_path: Path, make_sink: Any, start_relay: Any) -> None:
    dear = await make_sink()
    cheap = await make_sink(replies={"rcpt": {"a@bounce.example": "550 5.1.1 No such user"}})
    upstreams = [
        smtp_upstream("dear", dear.port, cost_per_1000=2.0),
        smtp_upstream("cheap", cheap.port, cost_per_1000=0.5),
    ]
    module = EXAMPLES / "policy_cheapest_unbounced.py"
    relay = await start_relay(policy_config(tmp_path, upstreams, module))

    bounced = await submit(relay, ["a@bounce.example"], MESSAGE)
    detail = await delivery_pass(relay, bounced, FINAL)
    assert detail.status is MessageStatus.FAILED
    [attempt] = detail.attempts
    assert (attempt.upstream, attempt.route) == (
        "cheap",
        "priority: try cheap, dear; policy: cheapest first",
    )

    other = await submit(relay, ["b@bounce.example"], MESSAGE)  # same domain, the same day
    detail = await delivery_pass(relay, other, FINAL)
    [attempt] = detail.attempts
    assert attempt.upstream == "dear"
    assert attempt.route == (
        "priority: try dear; skipped cheap: dropped by policy; "
        "policy: cheapest first; dropped cheap (bounced bounce.example today)"
    )
    await arrival(dear, "b@bounce.example")

    elsewhere = await submit(relay, ["c@other.example"], MESSAGE)  # another domain: cheap
    detail = await delivery_pass(relay, elsewhere, FINAL)
    assert [a.upstream for a in detail.attempts] == ["cheap"]
    await arrival(cheap, "c@other.example")


async def test_no_policy_means_no_hooks(tmp_path: Path, make_sink: Any, start_relay: Any) -> None:
    sink = await make_sink()
    relay = await start_relay(
        plaintext_listener(base_config(tmp_path, [smtp_upstream("s", sink.port)]))
    )
    policy = relay.app.policy
    assert (policy.on_connect, policy.on_mail, policy.on_rcpt, policy.on_data, policy.on_route) == (
        None,
    ) * 5
    await submit(relay, ["a@example.org"], MESSAGE)
    await arrival(sink, "a@example.org")


# -- `relay serve` as a real process: SIGHUP, and a module that does not load at start


@pytest.fixture
def relays() -> Any:
    started: list[RelayProcess] = []

    def start(config_path: Path) -> RelayProcess:
        started.append(RelayProcess(config_path))
        return started[-1]

    yield start
    for relay in started:
        relay.stop(signal.SIGKILL)


def test_sighup_reloads_the_module_under_an_open_session(tmp_path: Path, relays: Any) -> None:
    module = tmp_path / "site_policy.py"
    module.write_text(textwrap.dedent(RELOADED.replace("VERSION", "first version")))
    config = policy_config(tmp_path, [smtp_upstream("s", 9)], module)
    relay = relays(write_config(tmp_path, config))
    port = relay.wait_ready()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:  # opened before the reload
        client.login("shop", SITE_PASSWORD)
        assert client.mail(SENDER) == (550, b"5.7.1 first version")
        module.write_text(textwrap.dedent(RELOADED.replace("VERSION", "after SIGHUP")))
        relay.process.send_signal(signal.SIGHUP)
        for _ in range(50):  # SIGHUP is asynchronous: the reload line says it is done
            if relay.log_has("reloaded"):
                break
            threading.Event().wait(0.1)
        assert client.mail(SENDER) == (550, b"5.7.1 after SIGHUP")
    assert relay.stop(signal.SIGTERM) == 0


def test_serve_with_a_broken_module_is_one_clear_config_error(tmp_path: Path, relays: Any) -> None:
    module = tmp_path / "site_policy.py"
    module.write_text("def on_mail(facts)\n    return None\n")
    relay = relays(write_config(tmp_path, policy_config(tmp_path, [smtp_upstream("s", 9)], module)))
    assert relay.process.wait(30) == 2
    relay.stop()
    assert relay.log_has(f"policy.module: cannot load {module}: SyntaxError: expected ':'")
