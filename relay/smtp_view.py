"""The aiosmtpd handler: SMTP commands in, controller calls, reply lines out.

AUTH is verified by awaited ``auth_PLAIN`` / ``auth_LOGIN`` hooks (the
password hash is checked in a thread), never by aiosmtpd's synchronous
``authenticator`` callback. Our own failures answer 451, never 5xx.
"""

from __future__ import annotations

import logging
from base64 import b64decode
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session, TLSSetupException

from relay.auth_controller import AuthController
from relay.config import ListenerConfig
from relay.core.model import Credential, Site, SmtpReply
from relay.core.policy import (
    AUTH_SUCCEEDED,
    LOCAL_ERROR,
    Accept,
    Reject,
    SessionFacts,
    TempFail,
)
from relay.core.policy_hooks import ConnectFacts, MailFacts, RcptFacts
from relay.ingress_controller import IngressController, Queued, Submission
from relay.metrics import Metrics
from relay.policy_hooks_controller import PolicyHooks

log = logging.getLogger(__name__)


class AuthLineTooLong(Exception):
    """An AUTH exchange line over the SMTP line limit (read to its end and dropped)."""


class RelayEnvelope(Envelope):
    """aiosmtpd's envelope plus the site that MAIL FROM identified."""

    site: Site | None = None


def hook_names(cls: type) -> list[str]:
    """The names aiosmtpd looks for on its protocol and its handler: ``auth_*``,
    ``smtp_*``, ``handle_*``.

    aiosmtpd's ``SMTP.__init__`` lists ``dir()`` of both for every new
    connection, through ``inspect.getmembers``, which reads every other
    attribute too: ~100 us of each connection's CPU. Their ``__dir__``
    answers with these names alone, found once per class.
    """
    names = _HOOK_NAMES.get(cls)
    if names is None:
        names = [n for n in dir(cls) if n.startswith(("auth_", "smtp_", "handle_"))]
        _HOOK_NAMES[cls] = names
    return names


_HOOK_NAMES: dict[type, list[str]] = {}


class SmtpHandler:
    def __dir__(self) -> list[str]:
        return hook_names(type(self))

    def __init__(
        self,
        listener: ListenerConfig,
        ingress: IngressController,
        auth: AuthController,
        metrics: Metrics,
        policy: PolicyHooks,
    ) -> None:
        self._listener = listener
        self._ingress = ingress
        self._auth = auth
        self._metrics = metrics
        self._policy = policy

    # -- The connection, before the greeting: the policy's on_connect, when it has one.

    @property
    def screens_connections(self) -> bool:
        return self._policy.on_connect is not None

    async def connect_refusal(self, session: Session) -> str | None:
        """The reply line that refuses the connection instead of the greeting, or None."""
        ip = _client_ip(session)
        facts = ConnectFacts(ip, self._listener.name, self._listener.is_trusted(ip))
        verdict = await self._policy.check_connect(facts)
        if isinstance(verdict, Accept):
            return None
        return self._refuse("connect", verdict.reply)

    # -- EHLO: AUTH is never advertised on an `auth: none` listener.

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self._listener.offers_auth:
            responses = [r for r in responses if not r[4:].startswith("AUTH")]
        return responses

    # -- AUTH (RFC 4954, RFC 4616); aiosmtpd calls these instead of its built-ins.

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        try:
            return await self._auth_plain(server, args)
        except AuthLineTooLong:
            return _auth_refused(
                (await self._auth.line_too_long(_client_ip(server.session))).render()
            )

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        try:
            return await self._auth_login(server, args)
        except AuthLineTooLong:
            return _auth_refused(
                (await self._auth.line_too_long(_client_ip(server.session))).render()
            )

    async def _auth_plain(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            blob = _b64(args[1])
        parts = blob.split(b"\x00") if blob is not None else []
        if len(parts) != 3:
            return _auth_refused("501 5.5.2 Cannot decode AUTH PLAIN response")
        return await self._authenticate(server, parts[1], parts[2])

    async def _auth_login(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            username = await server.challenge_auth(server.AuthLoginUsernameChallenge)
            if username is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            username = _b64(args[1])
            if username is None:
                return _auth_refused("501 5.5.2 Cannot decode AUTH LOGIN response")
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, username, password)

    async def _authenticate(self, server: Any, username: bytes, password: bytes) -> AuthResult:
        try:
            name, secret = username.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            return _auth_refused("501 5.5.2 Username and password must be UTF-8")
        result = await self._auth.authenticate(name, secret, _client_ip(server.session))
        if isinstance(result, Credential):
            return AuthResult(success=True, auth_data=result, message=AUTH_SUCCEEDED.render())
        return _auth_refused(result.render())

    # -- The transaction.

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        data: object = session.auth_data if session.authenticated else None
        credential = data if isinstance(data, Credential) else None
        facts = SessionFacts(
            site_id=credential.site_id if credential else None,
            trusted=self._listener.is_trusted(_client_ip(session)),
            credential=credential,
        )
        site = self._ingress.begin(facts, address)
        if isinstance(site, Reject | TempFail):
            if (
                credential is not None and site.reply.code == 530
            ):  # removed or changed: may AUTH again
                session.authenticated, session.auth_data = False, None
            return self._refuse("mail", site.reply)
        if self._policy.on_mail is not None:
            verdict = await self._policy.check_mail(
                MailFacts(
                    site.id,
                    address,
                    credential.username if credential else None,
                    _client_ip(session),
                    self._listener.name,
                    session.host_name or "",
                )
            )
            if not isinstance(verdict, Accept):
                return self._refuse("mail", verdict.reply)
        assert isinstance(envelope, RelayEnvelope)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.site = site
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(envelope, RelayEnvelope) and envelope.site is not None
        verdict = await self._ingress.add_recipient(envelope.site, address, len(envelope.rcpt_tos))
        if isinstance(verdict, Accept) and self._policy.on_rcpt is not None:
            verdict = await self._policy.check_rcpt(self._rcpt_facts(session, envelope, address))
        if not isinstance(verdict, Accept):
            return self._refuse("rcpt", verdict.reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    def _rcpt_facts(self, session: Session, envelope: RelayEnvelope, address: str) -> RcptFacts:
        assert envelope.site is not None and envelope.mail_from is not None
        credential = session.auth_data if session.authenticated else None
        return RcptFacts(
            envelope.site.id,
            envelope.mail_from,
            address,
            tuple(envelope.rcpt_tos),
            credential.username if isinstance(credential, Credential) else None,
            _client_ip(session),
            self._listener.name,
        )

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope, RelayEnvelope)
        assert envelope.site and envelope.mail_from and envelope.original_content is not None
        credential = session.auth_data if session.authenticated else None
        tls = session.ssl is not None or server.implicit_tls
        submission = Submission(
            site=envelope.site,
            username=credential.username if isinstance(credential, Credential) else None,
            client_ip=_client_ip(session),
            helo=session.host_name or "",
            protocol="ESMTP" + ("S" if tls else "") + ("A" if credential else ""),
            sender=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            content=envelope.original_content,
        )
        result = await self._ingress.accept(submission)
        if isinstance(result, Queued):
            return result.reply.render()
        return self._refuse("data", result.reply)

    async def handle_exception(self, error: Exception) -> str:
        # Never 5xx for our own bug, and never the exception text on the wire.
        if isinstance(error, TLSSetupException):  # a client refused our certificate: routine
            log.warning("STARTTLS handshake failed: %s", error.__cause__ or error)
        else:
            log.error("SMTP session error: %s", type(error).__name__, exc_info=error)
        return LOCAL_ERROR.reply.render()

    def _refuse(self, stage: str, reply: SmtpReply) -> str:
        self._metrics.rejected.labels(stage, f"{reply.code // 100}xx").inc()
        return reply.render()


def _auth_refused(reply: str) -> AuthResult:
    # handled=False: aiosmtpd sends our reply (handled=True would send nothing).
    return AuthResult(success=False, handled=False, message=reply)


def _b64(text: str) -> bytes | None:
    try:
        return b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return None


def _client_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)
