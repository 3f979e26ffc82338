"""The load generator: N sessions, over reused or new connections, STARTTLS and AUTH when asked.

Each session connects, says EHLO (STARTTLS, EHLO again, AUTH PLAIN when
configured) and then sends messages until the shared count or the time limit
is reached. With ``reconnect`` a session sends one message per connection
and QUITs (reading the 221), then connects again, as PHPMailer, WordPress
and most web apps send. A connection refused at the greeting or during the
handshake (a 421, say) counts as one refused message, so a limit shows up in
the results instead of ending the run. Accept latency is the time from
writing the final dot to reading the 250. Runs in its own process
(``run_in_process``) so the orchestrator's own work does not disturb it.
Bounded in count and time; loopback only.

The HTTP variant (``HttpLoad``, ``run_http``) drives the public listener
instead: N clients over one keep-alive connection pool, each POSTing a 2 KB
JSON message to ``/api/v1/send`` with the site's API key, or, as a landing
page does, fetching a form token (``GET /api/form-token``) and posting one
inquiry with it (``POST /api/send-inquiry``). Accept latency is the time from
sending the request (for a form, the token's GET) to reading the 202.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import multiprocessing
import os
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

SMTP_SOURCE = "/usr/sbin/smtp-source"


@dataclass(frozen=True)
class Load:
    port: int
    sessions: int
    messages: int
    size: int
    starttls: bool = False
    auth: tuple[str, str] | None = None
    sender: str = "app@bench.example.com"
    time_limit: float = 300.0
    reconnect: bool = False  # a new connection per message (connect, one message, QUIT)


@dataclass(frozen=True)
class HttpLoad:
    """HTTP clients against the public listener: ``kind`` "send" (the send API) or "form"."""

    port: int
    clients: int
    messages: int
    size: int
    kind: str
    api_key: str = ""  # the site's key, for "send"
    site: str = "bench"  # the form's landingPageId
    time_limit: float = 300.0


@dataclass
class LoadResult:
    sent: int = 0
    refused: list[str] = field(default_factory=list)  # first replies that were not 250
    latencies: list[float] = field(default_factory=list)  # seconds, final dot to 250
    started: float = 0.0  # time.time() of the first connection
    finished: float = 0.0  # when the last 250 arrived


NUMBER = b"0" * 20  # in each message's Message-ID: the run's token and the message's number


def message(size: int, sender: str) -> bytes:
    """A message of ``size`` bytes. Its Message-ID holds NUMBER: each message sent gets its own,
    as an app's do (the relay answers a resent message with the first one's queue id)."""
    header = (
        f"From: <{sender}>\r\nTo: <rcpt@example.org>\r\nSubject: bench\r\n"
        f"Message-ID: <bench-{NUMBER.decode()}@bench.example.com>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return header + line * max(1, (size - len(header)) // len(line))


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> bytes:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    async def command(self, line: bytes, expect: bytes) -> None:
        self.writer.write(line + b"\r\n")
        answer = await self.reply()
        if not answer.startswith(expect):
            raise RuntimeError(f"{line[:20]!r}: {answer.decode(errors='replace').strip()}")


async def _open(load: Load, context: ssl.SSLContext) -> _Session:
    reader, writer = await asyncio.open_connection("127.0.0.1", load.port)
    session = _Session(reader, writer)
    try:
        greeting = await session.reply()
        if not greeting.startswith(b"220"):
            raise RuntimeError(f"greeting: {greeting.decode(errors='replace').strip()}")
        await session.command(b"EHLO loadgen.bench", b"250")
        if load.starttls:
            await session.command(b"STARTTLS", b"220")
            await writer.start_tls(context, server_hostname="localhost")
            await session.command(b"EHLO loadgen.bench", b"250")
        if load.auth:
            user, password = (part.encode() for part in load.auth)
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            await session.command(b"AUTH PLAIN " + token, b"235")
    except BaseException:
        writer.close()
        raise
    return session


async def run(load: Load) -> LoadResult:
    result = LoadResult(started=time.time())
    body = message(load.size, load.sender)
    data = body + b".\r\n" if body.endswith(b"\r\n") else body + b"\r\n.\r\n"
    before, after = data.split(NUMBER, 1)
    before += os.urandom(4).hex().encode()  # runs against one store do not repeat ids
    numbers = itertools.count()
    # One command at a time, as the apps that use a relay send (PHPMailer, Nodemailer, Django).
    commands = (
        (f"MAIL FROM:<{load.sender}>\r\n".encode(), b"250"),
        (b"RCPT TO:<rcpt@example.org>\r\n", b"250"),
        (b"DATA\r\n", b"354"),
    )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the servers present throwaway certificates
    remaining = [load.messages]
    deadline = time.monotonic() + load.time_limit

    async def send(s: _Session) -> None:
        for command, expect in commands:
            s.writer.write(command)
            answer = await s.reply()
            if not answer.startswith(expect):
                result.refused.append(answer.decode(errors="replace").strip())
                await s.command(b"RSET", b"250")
                return
        s.writer.write(before + b"%012d" % next(numbers) + after)
        dot = time.perf_counter()
        answer = await s.reply()
        result.latencies.append(time.perf_counter() - dot)
        if answer.startswith(b"250"):
            result.sent += 1
            result.finished = time.time()
        else:
            result.refused.append(answer.decode(errors="replace").strip())

    async def session() -> None:
        s: _Session | None = None
        while remaining[0] > 0 and time.monotonic() < deadline:
            remaining[0] -= 1
            if s is None:
                try:
                    s = await _open(load, context)
                except (OSError, RuntimeError) as error:  # ConnectionError is an OSError
                    result.refused.append(f"connection: {error}")
                    continue
            await send(s)
            if load.reconnect:
                await _quit(s)
                s = None
        if s is not None:
            await _quit(s)

    await asyncio.wait_for(
        asyncio.gather(*(session() for _ in range(load.sessions))), load.time_limit + 30
    )
    return result


async def _quit(s: _Session) -> None:
    """QUIT, read the 221 (as PHPMailer does), close."""
    s.writer.write(b"QUIT\r\n")
    with contextlib.suppress(OSError):  # the server closed first: nothing left to read
        await s.reply()
    s.writer.close()


async def hold_idle(port: int, count: int, seconds: float, opened: Any) -> None:
    """Open ``count`` connections, say EHLO on each, keep them idle for ``seconds``."""
    sessions = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        s = _Session(reader, writer)
        await s.reply()
        await s.command(b"EHLO idle.bench", b"250")
        sessions.append(s)
        opened.value = len(sessions)
    await asyncio.sleep(seconds)
    for s in sessions:
        s.writer.close()


def text_body(size: int) -> str:
    """About ``size`` bytes of text in lines of 76, as a message body or a form's message."""
    return ("x" * 76 + "\n") * max(1, size // 77)


async def run_http(load: HttpLoad) -> LoadResult:
    import aiohttp  # here: only the HTTP workloads' child needs it

    result = LoadResult(started=time.time())
    base = f"http://127.0.0.1:{load.port}"
    text = text_body(load.size - 120)  # the JSON's other fields and quoting make up the rest
    send_body = json.dumps({"to": ["rcpt@example.org"], "subject": "bench", "text": text}).encode()
    send_headers = {
        "Authorization": f"Bearer {load.api_key}",
        "Content-Type": "application/json",
    }
    remaining = [load.messages]
    deadline = time.monotonic() + load.time_limit

    async def refused(answer: aiohttp.ClientResponse) -> None:
        body = await answer.text()
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:200]
        result.refused.append(f"{answer.method} {answer.url.path}: {answer.status} {message}")

    async def send(session: aiohttp.ClientSession) -> None:
        start = time.perf_counter()
        if load.kind == "form":
            async with session.get(
                f"{base}/api/form-token", params={"landingPageId": load.site}
            ) as answer:
                if answer.status != 200:
                    await refused(answer)
                    return
                token = (await answer.json())["token"]
            body = json.dumps(
                {
                    "landingPageId": load.site,
                    "formToken": token,
                    "formData": {"name": "Ada", "email": "ada@example.org", "message": text},
                }
            ).encode()
            url, headers = f"{base}/api/send-inquiry", {"Content-Type": "application/json"}
        else:
            body, url, headers = send_body, f"{base}/api/v1/send", send_headers
        async with session.post(url, data=body, headers=headers) as answer:
            await answer.read()
            if answer.status != 202:
                await refused(answer)
                return
        result.latencies.append(time.perf_counter() - start)
        result.sent += 1
        result.finished = time.time()

    async def client(session: aiohttp.ClientSession) -> None:
        while remaining[0] > 0 and time.monotonic() < deadline:
            remaining[0] -= 1
            try:
                await send(session)
            except (aiohttp.ClientError, OSError) as error:
                result.refused.append(f"connection: {error!r}")

    connector = aiohttp.TCPConnector(limit=load.clients)  # keep-alive: connections are reused
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.wait_for(
            asyncio.gather(*(client(session) for _ in range(load.clients))), load.time_limit + 30
        )
    return result


def _child(target: Any, args: tuple[Any, ...], queue: Any) -> None:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        queue.put(runner(target(*args)))
    except BaseException as error:  # the parent reports it instead of waiting for nothing
        queue.put(RuntimeError(f"load generator failed: {error!r}"))


def run_smtp_source(load: Load) -> LoadResult:
    """Postfix's own generator, as a cross-check of the plain case (it cannot authenticate).

    It measures no accept latency; ``sent`` counts the messages when it exits cleanly.
    """
    result = LoadResult(started=time.time())
    argv = [SMTP_SOURCE, "-d", "-s", str(load.sessions), "-m", str(load.messages)]
    argv += ["-l", str(load.size), "-f", load.sender, "-t", "rcpt@example.org"]
    try:
        done = subprocess.run(  # noqa: S603 - fixed executable, our own arguments
            [*argv, f"127.0.0.1:{load.port}"],
            capture_output=True,
            text=True,
            timeout=load.time_limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        result.refused.append(f"smtp-source did not finish within {load.time_limit:.0f} s")
        return result
    result.finished = time.time()
    if done.returncode == 0:
        result.sent = load.messages
    else:
        result.refused.append(f"smtp-source: {done.stderr.strip()[-300:]}")
    return result


def run_in_process(load: Load | HttpLoad) -> LoadResult:
    target = run_http if isinstance(load, HttpLoad) else run
    queue: Any = multiprocessing.Queue()
    process = multiprocessing.Process(target=_child, args=(target, (load,), queue), daemon=True)
    process.start()
    result = queue.get(timeout=load.time_limit + 60)
    process.join(10)
    if isinstance(result, Exception):
        raise result
    assert isinstance(result, LoadResult)
    return result


def idle_in_process(port: int, count: int, seconds: float) -> tuple[multiprocessing.Process, Any]:
    """Start holding ``count`` idle connections in a child; returns (process, opened count)."""
    opened = multiprocessing.Value("i", 0)
    queue: Any = multiprocessing.Queue()
    process = multiprocessing.Process(
        target=_child, args=(hold_idle, (port, count, seconds, opened), queue), daemon=True
    )
    process.start()
    return process, opened
