"""The SMTP listeners: aiosmtpd servers on our own event loop, one per configured listener.

Only this module touches aiosmtpd's server classes. It also tracks the open
sessions so a shutdown can stop accepting, let a DATA in progress finish
storing, then say 421 to the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP

from relay import __version__
from relay.config import ListenerConfig
from relay.core.model import TlsMode
from relay.smtp_view import RelayEnvelope, SmtpHandler

log = logging.getLogger(__name__)
SESSION_TIMEOUT_SECONDS = 300  # RFC 5321 section 4.5.3.2.7: at least 5 minutes
# A reverse or forward path that is a plain dot-atom address (RFC 5321 section 4.1.2).
_PLAIN_PATH = re.compile(
    r"[ \t]*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-][A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{0,63}"
    r"@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)>[ \t]*(.*?)[ \t]*",
    re.DOTALL,
)


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP, aware of implicit TLS and of the set of open sessions."""

    def __init__(
        self, *args: Any, implicit_tls: bool, listeners: SmtpListeners, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.implicit_tls = implicit_tls
        self._listeners = listeners
        self.in_data = False

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
        super().connection_made(transport)
        self._listeners.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._listeners.sessions.discard(self)
        super().connection_lost(error)

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
            if (size == 3 and data == b".\r\n") or data.endswith(b"\r\n.\r\n"):
                break
            if limit and size > limit:  # keep reading to the end, keeping only its tail
                del data[:-5]
        if limit and size > limit:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        body = bytes(data[:-3])  # without the final ".\r\n"; the CRLF before it stays
        if max(map(len, body.split(b"\r\n")), default=0) > self.line_length_limit - 2:
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
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
            transport.close()


@dataclass
class SmtpListeners:
    servers: list[asyncio.Server] = field(default_factory=list)
    sessions: set[RelaySMTP] = field(default_factory=set)
    data_ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(
        self,
        listener: ListenerConfig,
        handler: SmtpHandler,
        hostname: str,
        max_message_bytes: int,
        tls_context: ssl.SSLContext | None,
    ) -> None:
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
                timeout=SESSION_TIMEOUT_SECONDS,
                implicit_tls=implicit,
                listeners=self,
            )

        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            factory, host=listener.host, port=listener.port, ssl=tls_context if implicit else None
        )
        self.servers.append(server)
        log.info(
            "listener %s on %s:%d (tls %s, auth %s)",
            listener.name,
            listener.host,
            listener.port,
            listener.tls.value,
            listener.auth.value,
        )

    @property
    def ports(self) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self.servers if s.sockets]

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
