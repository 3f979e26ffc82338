"""Operator policy hooks, the pure part: the facts a hook sees and what its answer may be.

A policy module (``policy.module``) answers with the core's verdicts
(``Accept``, ``Reject(reply)``, ``TempFail(reply)``), ``AddHeaders`` from
``on_data`` and ``RouteChoice`` from ``on_route``. Everything a hook returns
is checked here before the relay acts on it: a reply must be one printable
line of the right class, an added header a valid field the relay does not own,
a route only the relay's own candidates. Anything else is the hook's failure,
which the caller turns into ``hook_failed`` (451) or, for routing, keeps the
relay's route. Hooks can only refuse more or route narrower, never let in what
the relay refused or add an upstream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from relay.core.headers import HeaderField, make_field
from relay.core.model import SmtpReply
from relay.core.policy import Accept, Reject, TempFail, Verdict
from relay.core.routing import Route, Skip

HOOKS = ("on_connect", "on_mail", "on_rcpt", "on_data", "on_route")
# The fields the relay writes or rewrites, and those that must reach no recipient: a hook
# adds beside them, never a second one (it would replace ours in most readers' eyes).
RELAY_OWNED = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "message-id",
        "date",
        "received",
        "return-path",
        "dkim-signature",
        "bcc",
        "list-unsubscribe",
        "list-unsubscribe-post",
    }
)
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,75}")  # RFC 5322 3.6.8, the usual subset
_MAX_LINE = 998  # RFC 5322 2.1.1: a line, CRLF excluded
_MAX_ADDED = 20
_MAX_REPLY_TEXT = 400  # a reply line is at most 512 octets (RFC 5321 4.5.3.1.5)
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True)
class ConnectFacts:
    client_ip: str
    listener: str  # the listener's name in the config
    trusted: bool  # in the listener's trusted_networks


@dataclass(frozen=True)
class MailFacts:
    site_id: str
    sender: str  # MAIL FROM, "<>" for the null sender
    username: str | None  # the AUTH username; None for a trusted network
    client_ip: str
    listener: str
    helo: str


@dataclass(frozen=True)
class RcptFacts:
    site_id: str
    sender: str
    recipient: str
    recipients: tuple[str, ...]  # accepted so far in this transaction
    username: str | None
    client_ip: str
    listener: str


@dataclass(frozen=True)
class DataFacts:
    site_id: str
    sender: str
    recipients: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]  # (name, unfolded value) as the client sent them
    size: int  # bytes, as received
    username: str | None
    client_ip: str
    via: str  # smtp, api or form

    def header(self, name: str) -> str | None:
        """The first value of the field ``name`` (any case), or None."""
        key = name.lower()
        return next((v for n, v in self.headers if n.lower() == key), None)


@dataclass(frozen=True)
class UpstreamFacts:
    name: str
    kind: str  # smtp, file, ...
    cost_per_1000: float | None
    priority: int
    weight: int
    # Recipient domains of this message that this upstream hard-bounced (5.x.x) lately, with
    # the time of the last such bounce: what this process saw since on_route was loaded,
    # for the last 48 hours at most (relay/core/policy_hooks.RecentBounces).
    bounced: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteFacts:
    message_id: str
    site_id: str
    recipients: tuple[str, ...]  # still to deliver in this pass
    message_class: str  # transactional or bulk
    strategy: str  # how the relay ordered the candidates
    upstreams: tuple[UpstreamFacts, ...]  # the relay's candidates, in its order
    now: float


@dataclass(frozen=True)
class AddHeaders:
    """``on_data``: accept, with these fields added (after the client's, before signing)."""

    fields: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class RouteChoice:
    """``on_route``: try these of the relay's candidates, in this order; drop the others."""

    upstreams: Sequence[str]
    reason: str = ""


class HookError(Exception):
    """A hook's answer the relay cannot use: the hook failed."""


LOCAL_POLICY_FAILED = TempFail(SmtpReply(451, "4.3.0 Local policy check failed; try again later"))


def check_verdict(answer: object) -> Verdict:
    """A gate hook's answer (None means Accept) as a verdict, or HookError."""
    if answer is None or isinstance(answer, Accept):
        return Accept()
    if isinstance(answer, Reject | TempFail):
        _check_reply(answer)
        return answer
    raise HookError(f"returned {type(answer).__name__}, not Accept, Reject or TempFail")


def _check_reply(verdict: Reject | TempFail) -> None:
    reply = verdict.reply
    if not isinstance(reply, SmtpReply) or not isinstance(reply.code, int):
        raise HookError("the verdict's reply is not an SmtpReply(code, text)")
    wanted = range(500, 600) if isinstance(verdict, Reject) else range(400, 500)
    if reply.code not in wanted:
        kind = "Reject" if isinstance(verdict, Reject) else "TempFail"
        raise HookError(f"{kind} needs a {wanted.start // 100}xx code, not {reply.code}")
    text = reply.text
    if not isinstance(text, str) or len(text) > _MAX_REPLY_TEXT or not _PRINTABLE.fullmatch(text):
        raise HookError(f"reply text must be one printable ASCII line of at most "
                        f"{_MAX_REPLY_TEXT} characters")  # fmt: skip


def check_data_answer(answer: object, class_header: str) -> Verdict | tuple[HeaderField, ...]:
    """``on_data``'s answer: a verdict, or the header fields to add (validated), or HookError."""
    if not isinstance(answer, AddHeaders):
        return check_verdict(answer)
    try:
        added = list(answer.fields)
    except TypeError:
        raise HookError("AddHeaders takes a list of (name, value) pairs") from None
    if len(added) > _MAX_ADDED:
        raise HookError(f"at most {_MAX_ADDED} headers may be added")
    owned = RELAY_OWNED | {class_header.lower()}
    return tuple(_added_field(pair, owned) for pair in added)


def _added_field(pair: object, owned: frozenset[str]) -> HeaderField:
    if not (isinstance(pair, tuple | list) and len(pair) == 2):
        raise HookError("AddHeaders takes (name, value) pairs")
    name, value = pair
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
        raise HookError(f"not a header field name: {name!r}")
    if name.lower() in owned:
        raise HookError(f"{name} is the relay's own header: it may not be added or replaced")
    if not isinstance(value, str) or not _PRINTABLE.fullmatch(value.replace("\t", " ")):
        raise HookError(f"{name}: the value must be printable ASCII without CR, LF or NUL "
                        "(RFC 2047 encoded words for other text)")  # fmt: skip
    if len(name) + 2 + len(value) > _MAX_LINE:
        raise HookError(f"{name}: the field is longer than {_MAX_LINE} characters")
    return make_field(name, value)


def header_pairs(fields: Iterable[HeaderField]) -> tuple[tuple[str, str], ...]:
    """The client's fields as (name, value) text for a hook (read only, never sent)."""
    return tuple(
        (f.name.decode("ascii"), f.value.decode("utf-8", errors="replace")) for f in fields
    )


def route_facts(
    message_id: str,
    site_id: str,
    recipients: Sequence[str],
    message_class: str,
    route: Route,
    bounces: RecentBounces,
    now: float,
) -> RouteFacts:
    domains = {r.rpartition("@")[2].lower() for r in recipients}
    return RouteFacts(
        message_id,
        site_id,
        tuple(recipients),
        message_class,
        route.strategy.value,
        tuple(
            UpstreamFacts(
                u.name,
                u.kind.value,
                u.cost_per_1000,
                u.priority,
                u.weight,
                bounces.last(u.name, domains),
            )
            for u in route.upstreams
        ),
        now,
    )


def apply_choice(route: Route, answer: object) -> Route:
    """The relay's route as ``on_route`` narrowed it: None or Accept keep it unchanged.

    A name that is not one of the route's upstreams is ignored (said in the route text):
    a hook may reorder and drop, never add.
    """
    if answer is None or isinstance(answer, Accept):
        return route
    if not isinstance(answer, RouteChoice):
        raise HookError(f"returned {type(answer).__name__}, not a RouteChoice, Accept or None")
    names: list[object]
    try:
        names = list(answer.upstreams)
    except TypeError:
        names = [None]  # refused just below
    if isinstance(answer.upstreams, str) or not all(isinstance(n, str) for n in names):
        raise HookError("RouteChoice.upstreams must be a list of upstream names")
    wanted = [str(n) for n in names]
    reason = answer.reason if isinstance(answer.reason, str) else ""
    by_name = {u.name: u for u in route.upstreams}
    chosen = list(dict.fromkeys(n for n in wanted if n in by_name))
    ignored = [n for n in dict.fromkeys(wanted) if n not in by_name]
    dropped = [Skip(n, "dropped by policy") for n in by_name if n not in chosen]
    text = _shown(reason, 200) or (
        "narrowed" if dropped else "same order" if chosen == list(by_name) else "reordered"
    )
    if ignored:
        text += f" (ignored, not candidates: {_shown(', '.join(ignored), 100)})"
    return replace(
        route,
        upstreams=tuple(by_name[n] for n in chosen),
        skipped=(*route.skipped, *dropped),
        policy=text,
    )


def _shown(text: str, most: int) -> str:
    """One line of printable text for the route column (PostgreSQL refuses NUL in text)."""
    return "".join(c if c.isprintable() else " " for c in " ".join(text.split()))[:most]


def route_kept(route: Route, why: str) -> Route:
    """The relay's route, unchanged, saying that on_route failed (delivery must not stall)."""
    return replace(route, policy=f"on_route failed ({why}); the relay's route kept")


class RecentBounces:
    """(upstream, recipient domain) -> when that upstream last hard-bounced that domain.

    This process's memory, fed by its own delivery passes, for ``on_route``'s facts: bounded
    to ``WINDOW_SECONDS`` and ``MAX_ENTRIES`` (the oldest go first).
    """

    WINDOW_SECONDS = 48 * 3600.0
    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}

    def note(self, upstream: str, recipient: str, at: float) -> None:
        key = (upstream, recipient.rpartition("@")[2].lower())
        self._last.pop(key, None)  # re-inserted last: the dict stays oldest first
        self._last[key] = at
        oldest = next(iter(self._last))
        while len(self._last) > self.MAX_ENTRIES or self._last[oldest] < at - self.WINDOW_SECONDS:
            del self._last[oldest]
            oldest = next(iter(self._last))

    def last(self, upstream: str, domains: Iterable[str]) -> dict[str, float]:
        found = {}
        for domain in domains:
            at = self._last.get((upstream, domain))
            if at is not None:
                found[domain] = at
        return found
