"""The SMTP listeners: aiosmtpd servers on our own event loop, one per configured listener.

Only this module touches aiosmtpd's server classes. It also tracks the open
sessions so a shutdown can stop accepting, let a DATA in progress finish
storing, then say 421 to the rest; and it bounds them: past
``max_connections`` in all, or ``max_connections_per_ip`` from one client
(IPv6: one /64; the listener's trusted networks are exempt), a new connection
gets 421 and is closed before a session starts. A session idles at most
``PRE_MAIL_TIMEOUT_SECONDS`` before its first MAIL, and DATA may go on past
the session timeout while bytes keep arriving at ``MIN_DATA_RATE`` or better.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import re
import socket
import ssl
from base64 import b64decode, b64encode
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, _Missing

from relay import __version__
from relay.config import ListenerConfig
from relay.core.model import TlsMode
from relay.core.throttle import client_network
from relay.smtp_view import AuthLineTooLong, RelayEnvelope, SmtpHandler, hook_names

log = logging.getLogger(__name__)
SESSION_TIMEOUT_SECONDS = 300  # RFC 5321 section 4.5.3.2.7: at least 5 minutes
PRE_MAIL_TIMEOUT_SECONDS = 60  # an idle connection that has sent no MAIL yet costs a descriptor
MIN_DATA_RATE = 500  # bytes per second over a whole DATA (Postfix's smtpd_min_data_rate)
TOO_MANY_CONNECTIONS = b"421 4.7.0 Too many connections; try again later\r\n"
TOO_MANY_FROM_YOU = b"421 4.7.0 Too many connections from your address; try again later\r\n"
# A reverse or forward path that is a plain dot-atom address (RFC 5321 section 4.1.2).
_PLAIN_PATH = re.compile(
    r"[ \t]*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-][A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{0,63}"
    r"@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)>[ \t]*(.*?)[ \t]*",
    re.DOTALL,
)


def has_line_over(content: bytes, most: int) -> bool:
    """Whether a line of ``content`` (split at CRLF) is longer than ``most`` bytes.

    Jumps from the last CRLF of each window of ``most + 2`` bytes to the next, so it
    looks at a 25 MB message in a few hundred rfind calls in C and allocates nothing
    (splitting it into lines took 0.5 s and 360 MB on the event loop).
    """
    position, end = 0, len(content)
    while end - position > most:
        found = content.rfind(b"\r\n", position, position + most + 2)
        if found < 0:
            return True
        position = found + 2
    return False


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP, aware of implicit TLS and of the set of open sessions."""

    def __init__(
        self,
        *args: Any,
        implicit_tls: bool,
        listeners: SmtpListeners,
        listener: ListenerConfig,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, timeout=PRE_MAIL_TIMEOUT_SECONDS, **kwargs)
        self.implicit_tls = implicit_tls
        self._listeners = listeners
        self._listener = listener
        self._client: str | None = None  # the counted client; None: refused or not yet open
        self.in_data = False

    def __dir__(self) -> list[str]:
        return hook_names(type(self))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """``<local@domain> params`` without the email package's RFC 5322 parser: it cost
        ~15 % of the CPU per message. Anything less plain takes aiosmtpd's full parse."""
        match = _PLAIN_PATH.fullmatch(arg)
        if match is None or ".." in match.group(1) or self.local_part_limit:
            return super()._getaddr(arg)
        return match.group(1), match.group(2)

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # a new connection (STARTTLS calls this again)
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            refusal = self._listeners.admit(ip, exempt=self._listener.is_trusted(ip))
            if isinstance(refusal, bytes):
                transport.write(refusal)  # type: ignore[attr-defined]  # as in say_goodbye
                transport.close()
                return
            self._client = refusal
            self._listeners.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._client is None:  # refused before a session began
            asyncio.StreamReaderProtocol.connection_lost(self, error)
            return
        self._listeners.sessions.discard(self)
        self._listeners.release(self._client)
        self._client = None
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        """aiosmtpd's session, after the policy's on_connect (it has no hook before the
        greeting): a refusal is said instead of the greeting, and the connection closed."""
        handler = self.event_handler
        if isinstance(handler, SmtpHandler) and handler.screens_connections:
            assert self.session is not None
            refusal = await handler.connect_refusal(self.session)
            if refusal is not None:
                await self.push(refusal)
                if self.transport is not None:
                    self.transport.close()
                return
        await super()._handle_client()

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(arg)
        if self.envelope is not None and self.envelope.mail_from is not None:
            self._timeout_duration = SESSION_TIMEOUT_SECONDS  # a real client, not an idler

    async def challenge_auth(
        self, challenge: str | bytes, encode_to_b64: bool = True, log_client_response: bool = False
    ) -> _Missing | bytes:
        """aiosmtpd's, but an answer longer than a line may be is read to its end and raised
        as AuthLineTooLong (aiosmtpd lets readline's ValueError escape as our error)."""
        raw = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (b64encode(raw) if encode_to_b64 else raw))
        try:
            line = await self._reader.readuntil()
        except asyncio.LimitOverrunError as overrun:
            await self._discard_line(overrun.consumed)
            raise AuthLineTooLong from None
        blob = line.strip()
        if blob == b"*":  # RFC 4954 section 4: the client cancels
            await self.push("501 5.7.0 Auth aborted")
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64")
            return MISSING

    async def _discard_line(self, consumed: int) -> None:
        while True:
            await self._reader.readexactly(consumed)
            try:
                await self._reader.readuntil()
                return
            except asyncio.LimitOverrunError as overrun:
                consumed = overrun.consumed

    async def handle_exception(self, error: Exception) -> str:
        # Our failure ends the transaction: the client's next MAIL must not get 503.
        self._set_rset_state()  # type: ignore[no-untyped-call]
        reply: str = await super().handle_exception(error)
        return reply

    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await self._data(arg)
        finally:
            self.in_data = False
            self._listeners.data_ended.set()

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA with the message read in chunks, not line by line (that cost
        ~57 % of the CPU at 50 KB). Same rules: end only at <CRLF>.<CRLF>, 552 past the
        size limit and 500 for a line over 1000 bytes, both after the whole message is
        read; dots unstuffed (RFC 5321 section 4.5.2). Bare CR and LF are refused later,
        by the ingress policy, exactly as before."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = bytearray()
        size, limit = 0, self.data_size_limit
        started = last_reset = self.loop.time()
        while True:
            try:
                # Every end of data ends in ".\r\n": read to each one and look behind it.
                chunk = await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as overrun:  # no ".\r\n" in the next KB
                chunk = await self._reader.readexactly(overrun.consumed)
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            size += len(chunk)
            data += chunk
            now = self.loop.time()
            if now - last_reset > 1 and (
                now - started < SESSION_TIMEOUT_SECONDS or size >= MIN_DATA_RATE * (now - started)
            ):  # still arriving, fast enough: not idle
                self._reset_timeout(SESSION_TIMEOUT_SECONDS)
                last_reset = now
            if (size == 3 and data == b".\r\n") or data.endswith(b"\r\n.\r\n"):
                break
            if limit and size > limit:  # keep reading to the end, keeping only its tail
                del data[:-5]
        if limit and size > limit:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        body = bytes(data[:-3])  # without the final ".\r\n"; the CRLF before it stays
        if has_line_over(body, self.line_length_limit - 2):
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        content = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    def say_goodbye(self) -> None:
        """Shutdown: 421 (RFC 5321 section 3.8) and close."""
        transport: Any = self.transport  # uvloop's transports are no asyncio.WriteTransport
        if transport is not None and not transport.is_closing():
            transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
            transport.close()


@dataclass
class SmtpListeners:
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    servers: list[asyncio.Server] = field(default_factory=list)
    started: dict[str, int] = field(default_factory=dict)  # listener name -> its port
    sessions: set[RelaySMTP] = field(default_factory=set)
    data_ended: asyncio.Event = field(default_factory=asyncio.Event)
    per_client: Counter[str] = field(default_factory=Counter)
    refused: Callable[[str], None] = lambda reason: None  # counts a refused connection

    def admit(self, ip: str, exempt: bool) -> str | bytes:
        """Count a new connection: its client key, or the 421 line that refuses it."""
        if len(self.sessions) >= self.max_connections:
            self.refused("total")
            log.warning("SMTP connection from %s refused: %d sessions open", ip, len(self.sessions))
            return TOO_MANY_CONNECTIONS
        client = client_network(ip)
        if not exempt and self.per_client[client] >= self.max_connections_per_ip:
            self.refused("per_ip")
            log.warning(
                "SMTP connection from %s refused: %d open from %s",
                ip,
                self.per_client[client],
                client,
            )
            return TOO_MANY_FROM_YOU
        self.per_client[client] += 1
        return client

    def release(self, client: str) -> None:
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]

    async def start(
        self,
        listener: ListenerConfig,
        handler: SmtpHandler,
        hostname: str,
        max_message_bytes: int,
        tls_context: ssl.SSLContext | None,
        sockets: Sequence[socket.socket] = (),
    ) -> None:
        """Serve ``listener`` on its host and port, or on ``sockets`` when given."""
        implicit = listener.tls is TlsMode.IMPLICIT
        auth_methods_off = [] if listener.offers_auth else ["PLAIN", "LOGIN"]

        def factory() -> RelaySMTP:
            return RelaySMTP(
                handler,
                hostname=hostname,
                ident=f"relay {__version__} ESMTP",
                data_size_limit=max_message_bytes,
                tls_context=tls_context if listener.tls is TlsMode.STARTTLS else None,
                # Implicit TLS is TLS from the first byte; aiosmtpd only knows STARTTLS.
                auth_require_tls=not (implicit or listener.allow_plaintext_auth),
                auth_exclude_mechanism=auth_methods_off,
                implicit_tls=implicit,
                listeners=self,
                listener=listener,
            )

        loop = asyncio.get_running_loop()
        ssl_context = tls_context if implicit else None
        if sockets:  # bound by the supervisor: one server per address
            servers = [
                await loop.create_server(factory, sock=sock, ssl=ssl_context) for sock in sockets
            ]
        else:
            servers = [
                await loop.create_server(
                    factory, host=listener.host, port=listener.port, ssl=ssl_context
                )
            ]
        self.servers.extend(servers)
        self.started[listener.name] = servers[0].sockets[0].getsockname()[1]
        log.info(
            "listener %s on %s:%d (tls %s, auth %s)",
            listener.name,
            listener.host,
            self.started[listener.name],
            listener.tls.value,
            listener.auth.value,
        )

    @property
    def ports(self) -> list[int]:
        return list(self.started.values())

    async def stop(self, drain_seconds: float) -> None:
        """Stop accepting; wait for DATA in progress to be stored; close the rest with 421."""
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        while any(s.in_data for s in self.sessions) and loop.time() < deadline:
            self.data_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.data_ended.wait(), deadline - loop.time())
        for session in list(self.sessions):
            session.say_goodbye()
        for server in self.servers:
            await server.wait_closed()
