"""Clients that hand messages to upstreams: SMTP (aiosmtplib, pooled) and local files.

Both answer ``send()`` with a TransactionResult, never an exception: every
aiosmtplib, ssl and OS error is translated here, at this one edge, into a
stage plus either the upstream's reply or a transport error text. TLS is
never silently dropped: an upstream configured for STARTTLS that does not
offer it fails at the TLS stage, and a password is never sent over a
connection without TLS unless the file says ``allow_plaintext_auth: true``.

An upstream made through the admin API may only reach public addresses
(unless ``admin.allow_private_upstreams``): its name is resolved before each
connection, every address is checked, and the connection goes to the checked
address (TLS still verifies the name), so a DNS answer that changed since the
upstream was saved cannot lead it into the relay's own network. A peer that
does not speak SMTP is described as such, never quoted: its first bytes
(an SSH or database banner) are not ours to show.

A send that waits for one of an upstream's ``max_connections`` waits behind
the other transactional sends, never behind bulk ones (``Slots``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosmtplib

from relay.core.classify import Stage, TransactionResult
from relay.core.model import SmtpReply, TlsMode, Upstream, UpstreamKind
from relay.core.network import parse_ip, restricted_kind
from relay.core.policy import has_only_crlf

IDLE_SECONDS = 30.0  # reuse a connection only this long after its last message
RESOLVE_SECONDS = 10.0  # at most this long for a name's addresses
NOT_SMTP = "the server did not answer as an SMTP server"
PLAINTEXT_AUTH_REFUSED = (
    "refused to send the password without TLS: use tls: starttls or implicit "
    "(or allow_plaintext_auth: true in the config file)"
)
_PLAIN_ADDRESS = re.compile(r"[!#-;=?A-~]+@[!#-;=?A-~]+|")  # printable ASCII; no <>"@ or space


def _is_plain(address: str) -> bool:
    """An address that goes on the command line between < and > exactly as it is."""
    return _PLAIN_ADDRESS.fullmatch(address) is not None


@dataclass(frozen=True)
class CheckResult:
    """An active check: how far it got, how long each step took, and the exact failure."""

    ok: bool
    stage: Stage  # the last stage reached
    detail: str  # "ok", or e.g. "auth: 535 5.7.8 authentication failed"
    steps: tuple[tuple[str, float], ...] = ()  # (step, seconds) for each step done

    @property
    def summary(self) -> str:
        timings = ", ".join(f"{step} {seconds * 1000:.0f} ms" for step, seconds in self.steps)
        return f"{self.detail} ({timings})" if timings else self.detail


class UpstreamClient(Protocol):
    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        content: bytes,
        message_id: str,
        bulk: bool = False,
    ) -> TransactionResult:
        """``bulk``: the message is bulk mail, which lets transactional mail go first."""

    async def check(self) -> CheckResult: ...

    async def close(self) -> None: ...


class UnsafeDestination(Exception):
    """An API upstream's host is, or resolves to, an address it may not reach; says which."""


Address = tuple[int, tuple[object, ...]]  # (family, sockaddr) as getaddrinfo gives them
# (host, port, seconds) -> the addresses to connect to, or UnsafeDestination
Resolver = Callable[[str, int | None, float], Awaitable[list[Address]]]


async def public_addresses(host: str, port: int | None, within: float) -> list[Address]:
    """``host``'s addresses, every one of them public, or UnsafeDestination saying why not.

    The event loop's getaddrinfo: no blocking call on the loop.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(min(within, RESOLVE_SECONDS)):
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UnsafeDestination(f"{host} does not resolve ({error.strerror})") from None
    except TimeoutError:
        raise UnsafeDestination(f"{host} did not resolve in time") from None
    addresses: list[Address] = []
    for family, _, _, _, sockaddr in found:
        ip = parse_ip(str(sockaddr[0]))
        kind = restricted_kind(ip) if ip is not None else "unknown"
        if kind is not None:
            where = host if str(ip) == host else f"{host} resolves to {ip}, which"
            raise UnsafeDestination(
                f"{where} is a {kind} address; upstreams made through the API may only reach "
                "public addresses (admin.allow_private_upstreams: true in the config file "
                "allows others)"
            )
        addresses.append((family, tuple(sockaddr)))
    if not addresses:
        raise UnsafeDestination(f"{host} has no address")
    return addresses


async def _open_socket(addresses: Sequence[Address], within: float) -> socket.socket:
    """A connected socket to the first of ``addresses`` that answers, ``within`` seconds."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    async with asyncio.timeout(within):
        for family, sockaddr in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, sockaddr)
            except OSError as error:
                sock.close()
                last = error
                continue
            except BaseException:
                sock.close()
                raise
            return sock
    raise last if last is not None else OSError("no address to connect to")


def make_client(
    upstream: Upstream, local_hostname: str, allow_private: bool = False
) -> UpstreamClient:
    """``allow_private``: admin.allow_private_upstreams (the file's upstreams are trusted)."""
    if upstream.kind is UpstreamKind.FILE:
        return FileUpstreamClient(upstream)
    public_only = not upstream.managed_by_file and not allow_private
    return SmtpUpstreamClient(upstream, local_hostname, public_addresses if public_only else None)


class UpstreamClients:
    """One client per upstream, replaced when a reload changes that upstream."""

    def __init__(self, local_hostname: str, allow_private: bool = False) -> None:
        self._local_hostname = local_hostname
        self.allow_private = allow_private
        self._clients: dict[str, tuple[Upstream, UpstreamClient]] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # old clients closing after a reload

    def get(self, upstream: Upstream) -> UpstreamClient:
        known = self._clients.get(upstream.name)
        if known is not None and known[0] == upstream:
            return known[1]
        if known is not None:
            task = asyncio.get_running_loop().create_task(known[1].close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        client = make_client(upstream, self._local_hostname, self.allow_private)
        self._clients[upstream.name] = (upstream, client)
        return client

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        await asyncio.gather(*(client.close() for _, client in clients.values()))


class _Failed(Exception):
    def __init__(self, result: TransactionResult) -> None:
        self.result = result


def _reply(error: aiosmtplib.SMTPResponseException) -> SmtpReply:
    return SmtpReply(error.code, error.message)


def _is_reply(error: aiosmtplib.SMTPResponseException) -> bool:
    """A reply with an SMTP code; aiosmtplib says -1 for a line that is not one."""
    return 200 <= error.code <= 599


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, aiosmtplib.SMTPConnectError) and isinstance(
        error.__cause__, BaseException
    ):
        return _describe(error.__cause__, timeout)
    text = str(error) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."


class Slots:
    """At most ``size`` holders at a time; a waiting transactional send goes before every
    bulk one (a semaphore with two queues), so a campaign's backlog at an upstream's
    connection limit never holds up a password reset by more than one send."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    async def acquire(self, bulk: bool = False) -> None:
        if self._free > 0 and not any(self._waiting):
            self._free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        queue = self._waiting[bulk]
        queue.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # handed a slot as it was cancelled: pass it on
            elif granted in queue:
                queue.remove(granted)
            raise

    def release(self) -> None:
        for queue in self._waiting:
            while queue:
                granted = queue.popleft()
                if not granted.done():
                    granted.set_result(None)  # the slot passes straight to the waiter
                    return
        self._free += 1

    @contextlib.asynccontextmanager
    async def held(self, bulk: bool) -> AsyncIterator[None]:
        await self.acquire(bulk)
        try:
            yield
        finally:
            self.release()


class SmtpUpstreamClient:
    """Connections to one SMTP upstream, at most ``max_connections``, reused while fresh."""

    def __init__(
        self, upstream: Upstream, local_hostname: str, resolve: Resolver | None = None
    ) -> None:
        """``resolve``: where to connect, decided here (an API upstream: public_addresses);
        None lets the OS resolve the name as it connects."""
        self.upstream = upstream
        self._local_hostname = local_hostname
        self._resolve = resolve
        self._slots = Slots(upstream.max_connections)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._tls_context = self._make_tls_context()

    def _make_tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.upstream.ca_file)
        if not self.upstream.verify_tls:  # the operator's explicit, per-upstream choice
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        content: bytes,
        message_id: str,
        bulk: bool = False,
    ) -> TransactionResult:
        async with self._slots.held(bulk):
            smtp = self._take_idle()
            if smtp is not None:
                result = await self._transaction(smtp, sender, recipients, content)
                stale = result.transport_error is not None and result.stage is Stage.MAIL
                if not stale:
                    self._keep_or_close(smtp, result)
                    return result
                smtp.close()  # the upstream closed it while idle: one fresh try
            try:
                smtp = await self._connect()
            except _Failed as failed:
                return failed.result
            result = await self._transaction(smtp, sender, recipients, content)
            self._keep_or_close(smtp, result)
            return result

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            smtp, since = self._idle.pop()
            if smtp.is_connected and now - since < IDLE_SECONDS:
                return smtp
            smtp.close()
        return None

    def _keep_or_close(self, smtp: aiosmtplib.SMTP, result: TransactionResult) -> None:
        if result.transport_error is None and smtp.is_connected:
            self._idle.append((smtp, time.monotonic()))
        else:
            smtp.close()

    async def check(self) -> CheckResult:
        """A fresh connection through EHLO, STARTTLS and AUTH, then QUIT (not pooled)."""
        steps: list[tuple[str, float]] = []
        try:
            smtp = await self._connect(steps)
        except _Failed as failed:
            return CheckResult(False, failed.result.stage, failed.result.summary, tuple(steps))
        started = time.monotonic()
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()  # the checks that matter passed; a rude QUIT is not a failure
        steps.append(("quit", time.monotonic() - started))
        return CheckResult(
            True, Stage.AUTH if self.upstream.username else Stage.CONNECT, "ok", tuple(steps)
        )

    async def _connect(self, steps: list[tuple[str, float]] | None = None) -> aiosmtplib.SMTP:
        """Connect, EHLO, STARTTLS and AUTH as configured; ``steps`` gets each step's time."""
        u = self.upstream
        steps = [] if steps is None else steps
        started = time.monotonic()

        def done(step: str) -> None:
            nonlocal started
            now = time.monotonic()
            steps.append((step, now - started))
            started = now

        stage = Stage.TLS if u.tls is TlsMode.IMPLICIT else Stage.CONNECT
        try:
            smtp = await self._smtp()
        except UnsafeDestination as error:
            raise _Failed(TransactionResult(Stage.CONNECT, transport_error=str(error))) from None
        except (OSError, TimeoutError) as error:
            raise _Failed(
                TransactionResult(
                    Stage.CONNECT, transport_error=_describe(error, u.timeout_seconds)
                )
            ) from None
        try:
            await smtp.connect()
            done("connect")
            stage = Stage.CONNECT
            await smtp.ehlo()
            done("ehlo")
            if u.tls is TlsMode.STARTTLS:
                stage = Stage.TLS
                await smtp.starttls()
                done("starttls")
            if u.username:
                stage = Stage.AUTH
                if u.tls is TlsMode.NONE and not u.allow_plaintext_auth:
                    smtp.close()  # defence in depth: the config refuses this already
                    raise _Failed(TransactionResult(stage, transport_error=PLAINTEXT_AUTH_REFUSED))
                password = u.password.reveal() if u.password else ""
                await smtp.login(u.username, password)
                done("auth")
        except aiosmtplib.SMTPResponseException as error:
            smtp.close()
            if not _is_reply(error):
                raise _Failed(TransactionResult(stage, transport_error=NOT_SMTP)) from None
            raise _Failed(TransactionResult(stage, _reply(error))) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            smtp.close()
            if isinstance(error, ssl.SSLError) or isinstance(error.__cause__, ssl.SSLError):
                stage = Stage.TLS
            raise _Failed(
                TransactionResult(stage, transport_error=_describe(error, u.timeout_seconds))
            ) from None
        return smtp

    async def _smtp(self) -> aiosmtplib.SMTP:
        """The client, not yet connected; for an API upstream, bound to a checked address."""
        u = self.upstream
        sock = None
        if self._resolve is not None and u.host is not None:
            addresses = await self._resolve(u.host, u.port, u.timeout_seconds)
            sock = await _open_socket(addresses, u.timeout_seconds)
        # With a socket, the name stays the TLS server name (SNI and the certificate check).
        return aiosmtplib.SMTP(
            hostname=u.host,
            port=None if sock is not None else u.port,
            sock=sock,
            use_tls=u.tls is TlsMode.IMPLICIT,
            start_tls=False,
            tls_context=self._tls_context,
            local_hostname=self._local_hostname,
            timeout=u.timeout_seconds,
        )

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, sender: str, recipients: Sequence[str], content: bytes
    ) -> TransactionResult:
        stage = Stage.MAIL
        replies: dict[str, SmtpReply] = {}
        try:
            options = (
                ["BODY=8BITMIME"]
                if not content.isascii() and smtp.supports_extension("8bitmime")
                else []
            )
            await self._mail(smtp, sender, options)
            stage = Stage.RCPT
            for recipient in recipients:
                try:
                    response = await self._rcpt(smtp, recipient)
                    replies[recipient] = SmtpReply(response.code, response.message)
                except aiosmtplib.SMTPRecipientRefused as refused:
                    replies[recipient] = _reply(refused)
            if not any(reply.is_success for reply in replies.values()):
                await smtp.rset()
                return TransactionResult(Stage.RCPT, next(reversed(replies.values())), replies)
            stage = Stage.DATA
            response = await self._data(smtp, content)
            return TransactionResult(
                Stage.DATA, SmtpReply(response.code, response.message), replies
            )
        except aiosmtplib.SMTPResponseException as error:
            if not _is_reply(error):
                smtp.close()
                return TransactionResult(stage, None, replies, NOT_SMTP)
            if smtp.is_connected:
                await self._reset(smtp)
            return TransactionResult(stage, _reply(error), replies)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            smtp.close()
            return TransactionResult(
                stage, None, replies, _describe(error, self.upstream.timeout_seconds)
            )

    # MAIL and RCPT: aiosmtplib parses every address with email.utils (5 % of the CPU);
    # ours were checked at ingress, so a plain one is quoted as it is. After STARTTLS
    # without AUTH the library's mail() says the EHLO again first.

    async def _mail(self, smtp: aiosmtplib.SMTP, sender: str, options: list[str]) -> None:
        if not _is_plain(sender) or smtp.is_ehlo_or_helo_needed:
            await smtp.mail(sender, options=options)
            return
        extra = [option.encode("ascii") for option in options]
        response = await smtp.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(), *extra)
        if response.code != 250:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)

    async def _rcpt(self, smtp: aiosmtplib.SMTP, recipient: str) -> aiosmtplib.SMTPResponse:
        if not _is_plain(recipient):
            return await smtp.rcpt(recipient)
        response = await smtp.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode())
        if response.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)
        return response

    async def _data(self, smtp: aiosmtplib.SMTP, content: bytes) -> aiosmtplib.SMTPResponse:
        """DATA, then the content dot-stuffed with bytes.replace.

        aiosmtplib's ``data()`` runs two regular expressions over every message
        (line endings, dot-stuffing): a third of the relay's CPU at 50 KB. Our
        content already ends every line with CRLF (the ingress refuses bare CR
        and LF), so only the stuffing is left; anything else goes the library's way.
        """
        if not has_only_crlf(content):
            return await smtp.data(content)
        start = await smtp.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost after DATA")
        stuffed = content.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        ending = b".\r\n" if stuffed.endswith(b"\r\n") or not stuffed else b"\r\n.\r\n"
        # No await between the write and read_response(): the reply cannot arrive unawaited.
        protocol.write(stuffed + ending)
        response = await protocol.read_response(timeout=self.upstream.timeout_seconds)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for smtp, _ in idle:
            try:
                await asyncio.wait_for(smtp.quit(), timeout=5)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()


class FileUpstreamClient:
    """Writes each message to ``<path>/<message id>.eml`` (for local development).

    The file starts with Return-Path and X-Relay-Recipients so the envelope is
    visible; it is written to a temporary name, fsynced, then renamed, so a
    reader never sees half a message and a retry simply overwrites it.
    """

    def __init__(self, upstream: Upstream) -> None:
        assert upstream.path is not None
        self.upstream = upstream
        self._directory = Path(upstream.path)

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        content: bytes,
        message_id: str,
        bulk: bool = False,
    ) -> TransactionResult:
        envelope = f"Return-Path: <{sender}>\r\nX-Relay-Recipients: {', '.join(recipients)}\r\n"
        try:
            path = await asyncio.to_thread(self._write, message_id, envelope.encode() + content)
        except OSError as error:
            return TransactionResult(Stage.DATA, None, {}, f"cannot write file: {error.strerror}")
        accepted = SmtpReply(250, "2.0.0 OK")
        return TransactionResult(
            Stage.DATA,
            SmtpReply(250, f"2.0.0 written to {path}"),
            dict.fromkeys(recipients, accepted),
        )

    async def check(self) -> CheckResult:
        started = time.monotonic()
        try:
            await asyncio.to_thread(self._directory.mkdir, parents=True, exist_ok=True)
            writable = await asyncio.to_thread(os.access, self._directory, os.W_OK)
        except OSError as error:
            return CheckResult(
                False, Stage.DATA, f"cannot create {self._directory}: {error.strerror}"
            )
        seconds = time.monotonic() - started
        if not writable:
            return CheckResult(
                False, Stage.DATA, f"{self._directory} is not writable", (("write", seconds),)
            )
        return CheckResult(True, Stage.DATA, "ok", (("write", seconds),))

    def _write(self, message_id: str, data: bytes) -> Path:
        self._directory.mkdir(parents=True, exist_ok=True)
        final = self._directory / f"{message_id}.eml"
        temporary = final.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
        return final

    async def close(self) -> None:
        return None
