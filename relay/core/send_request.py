"""The send API's request: a parsed JSON body checked into a `SendRequest`, or every problem.

Decides what a site may ask of ``POST /api/v1/send``: From is the site's own
address or matches one of its ``senders``; recipients are plain addresses, at
least one and at most ``max_recipients`` in to, cc and bcc together; custom
headers never name one the relay or the message builder owns. Guarantees: no
string bound for a header (subject, names, addresses, header values,
filenames) holds a control character, so none can add or split a header; no
string holds a lone surrogate (it could not be encoded); any JSON value gives
problems, never an exception, in time linear in its size. Each problem is
``"<path>: <what is wrong>"``, and every one is listed.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from types import MappingProxyType
from typing import Any

from relay.core.addresses import control_character, is_address, sender_matches
from relay.core.model import MessageClass, Site

MAX_HEADER_CHARS = 998  # RFC 5322 2.1.1: a line holds at most 998 characters
MAX_FILENAME_CHARS = 255  # what common file systems keep
_KEYS = frozenset(
    {"from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "template"}
    | {"variables", "attachments", "headers", "message_class"}
)
# The relay writes these (DESIGN, public HTTP ingress), the builder writes the MIME ones, and
# receivers trust the authentication results: a request that sets any of them is refused.
OWNED_HEADERS = frozenset(
    {"from", "sender", "to", "cc", "bcc", "reply-to", "message-id", "date", "received"}
    | {"dkim-signature", "return-path", "subject", "mime-version", "authentication-results"}
)
# content-*: the builder moves every Content- header into the body part it wraps;
# resent-*: trace fields of a re-sent message; arc-*: authentication results again.
OWNED_HEADER_PREFIXES = ("content-", "resent-", "arc-")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")  # RFC 5322 3.6.8 ftext; fits a line
_MIME_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,64}")  # RFC 6838 4.2
_SURROGATE = re.compile("[\ud800-\udfff]")
# RFC 5322 3.2.3's dot-atom without "=", so without anything like an encoded word.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$&'*+/?^_`{|}~-]+(?:\.[A-Za-z0-9!#$&'*+/?^_`{|}~-]+)*")
# The stdlib's built-in table only: guesses must not depend on the machine's /etc/mime.types.
_TYPES = mimetypes.MimeTypes()


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str  # type/subtype, lower case


@dataclass(frozen=True)
class Upload:
    """A multipart file part as the HTTP view found it: checked like a JSON attachment."""

    filename: str | None
    content_type: str | None
    content: bytes


@dataclass(frozen=True)
class SendRequest:
    from_email: str
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    from_name: str | None = None
    reply_to: str | None = None
    subject: str = ""
    text: str | None = None
    html: str | None = None
    template: str | None = None
    variables: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    attachments: tuple[Attachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # (name, value) in the request's order
    message_class: MessageClass | None = None  # None: the site's


def parse_send_request(
    body: object, *, site: Site, max_recipients: int, files: Sequence[Upload] = ()
) -> SendRequest | list[str]:
    """The request, or every problem; ``files`` are the multipart file parts, if any."""
    if not isinstance(body, dict):
        return ["(top level): must be a JSON object"]
    problems = [f"{shown(key)}: unknown key" for key in body if key not in _KEYS]
    from_email, from_name = _sender(body.get("from"), site, problems)
    to, cc, bcc = _recipients(body, max_recipients, problems)
    reply_to = body.get("reply_to")
    if reply_to is not None and (problem := address_problem(reply_to)):
        problems.append(f"reply_to: {problem}")
    template = _text(body, "template", problems, header=True)
    if template == "":
        problems.append("template: must be a template's name")
    subject = _text(body, "subject", problems, header=True)
    text = _text(body, "text", problems, header=False)
    html = _text(body, "html", problems, header=False)
    if body.get("template") is None and body.get("subject") is None:
        problems.append("subject: is required (unless a template gives it)")
    if body.get("template") is None and body.get("text") is None and body.get("html") is None:
        problems.append("text: text or html is required (unless a template is named)")
    variables = body.get("variables")
    if variables is not None and not isinstance(variables, dict):
        problems.append("variables: must be an object")
    attachments = parse_attachments(body.get("attachments"), files, problems)
    headers = _headers(body.get("headers"), problems)
    message_class = body.get("message_class")
    if message_class is not None and message_class not in tuple(MessageClass):
        problems.append("message_class: must be transactional or bulk")
    if problems:
        return problems
    return SendRequest(
        from_email=from_email,
        from_name=from_name,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        subject=subject or "",
        text=text,
        html=html,
        template=template,
        variables=MappingProxyType(dict(variables or {})),
        attachments=attachments,
        headers=headers,
        message_class=MessageClass(message_class) if message_class is not None else None,
    )


def text_problem(value: str, *, header: bool, limit: int = MAX_HEADER_CHARS) -> str | None:
    """What is wrong with a string from outside, or None; ``header``: it becomes a header."""
    if len(value) > limit:
        return f"longer than {limit} characters"
    if _SURROGATE.search(value):
        return "not valid Unicode (holds a lone surrogate)"
    found = control_character(value) if header else ("\0" if "\0" in value else None)
    if found is not None:
        return f"contains a control character (U+{ord(found):04X}): no CR, LF, NUL or others"
    return None


def address_problem(value: object) -> str | None:
    """What is wrong with an address the message builder will write into a header, or None."""
    if not isinstance(value, str):
        return "must be a string"
    if not value.isascii():
        return "non-ASCII addresses are not supported (they need SMTPUTF8)"
    if not is_address(value):
        return "not an email address"
    local, _, domain = value.rpartition("@")
    if _DOT_ATOM.fullmatch(local) and not domain.startswith("["):
        return None  # what the parse below gives back unchanged (tested), without its ~25 us
    try:  # the builder refuses obsolete forms (a..b@x) and encoded words that is_address allows
        if Address(addr_spec=value).addr_spec != value:
            return "not an email address"
    except (ValueError, email.errors.MessageError):
        return "not an email address"
    return None


def shown(key: object) -> str:
    """A stranger's key as it may appear in a problem's path: short and printable."""
    text = key if isinstance(key, str) else repr(key)
    if len(text) > 64 or not text.isprintable():
        return repr(text[:64])
    return text


def _text(body: dict[str, Any], key: str, problems: list[str], *, header: bool) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{key}: must be a string")
        return None
    limit = MAX_HEADER_CHARS if header else len(value)  # a body's size is the HTTP layer's cap
    if problem := text_problem(value, header=header, limit=limit):
        problems.append(f"{key}: {problem}")
        return None
    return value


def _sender(value: object, site: Site, problems: list[str]) -> tuple[str, str | None]:
    if value is None:
        return site.from_email, site.from_name
    if not isinstance(value, dict):
        problems.append('from: must be an object {"email", "name"}')
        return site.from_email, site.from_name
    problems.extend(f"from.{shown(k)}: unknown key" for k in value if k not in ("email", "name"))
    address = value.get("email", site.from_email)
    if problem := address_problem(address):
        problems.append(f"from.email: {problem}")
    elif address.lower() != site.from_email.lower() and not (
        site.senders and sender_matches(address, site.senders)
    ):
        problems.append("from.email: not this site's address (its from or one of its senders)")
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        problems.append("from.name: must be a string")
    elif name is not None and (problem := text_problem(name, header=True)):
        problems.append(f"from.name: {problem}")
    if name is None and isinstance(address, str) and address.lower() == site.from_email.lower():
        name = site.from_name
    return address, name or None


def _recipients(
    body: dict[str, Any], max_recipients: int, problems: list[str]
) -> tuple[tuple[str, ...], ...]:
    lists: dict[str, list[Any]] = {}
    for key in ("to", "cc", "bcc"):
        value = body.get(key)
        if value is not None and not isinstance(value, list):
            problems.append(f"{key}: must be a list of addresses")
        lists[key] = value if isinstance(value, list) else []
    total = sum(len(items) for items in lists.values())
    if total > max_recipients:  # refused before a look at each: no cost beyond the cap
        problems.append(f"to: too many recipients ({total}; at most {max_recipients} in all)")
        return (), (), ()
    if total == 0 and all(isinstance(body.get(k), list | None) for k in lists):
        problems.append("to: at least one recipient is required (in to, cc or bcc)")
    for key, items in lists.items():
        for index, item in enumerate(items):
            if problem := address_problem(item):
                problems.append(f"{key}[{index}]: {problem}")
    return tuple(tuple(items) for items in lists.values())


def parse_attachments(
    value: object, files: Sequence[Upload], problems: list[str]
) -> tuple[Attachment, ...]:
    """Attachments from JSON (base64 content) and multipart files; problems recorded."""
    if value is not None and not isinstance(value, list):
        problems.append("attachments: must be a list")
        value = None
    found: list[Attachment] = []
    for index, entry in enumerate(value or []):
        path = f"attachments[{index}]"
        if not isinstance(entry, dict):
            problems.append(f'{path}: must be an object {{"filename", "content", "content_type"}}')
            continue
        keys = ("filename", "content", "content_type")
        problems.extend(f"{path}.{shown(k)}: unknown key" for k in entry if k not in keys)
        content = _base64(entry.get("content"), f"{path}.content", problems)
        made = _attachment(entry.get("filename"), entry.get("content_type"), path, problems)
        if made is not None and content is not None:
            found.append(Attachment(made[0], content, made[1]))
    for index, upload in enumerate(files):
        path = f"files[{index}]"
        made = _attachment(upload.filename, upload.content_type or None, path, problems)
        if made is not None:
            found.append(Attachment(made[0], upload.content, made[1]))
    return tuple(found)


def _base64(value: object, path: str, problems: list[str]) -> bytes | None:
    if not isinstance(value, str):
        problems.append(f"{path}: must be a base64 string")
        return None
    try:  # validate=True: any character outside the alphabet (newlines too) is refused
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        problems.append(f"{path}: not valid base64")
        return None


def _attachment(
    filename: object, content_type: object, path: str, problems: list[str]
) -> tuple[str, str] | None:
    """The checked (filename, content type), or None after recording what is wrong."""
    ok = True
    if not isinstance(filename, str) or not filename:
        problems.append(f"{path}.filename: must be a non-empty string")
        ok = False
    elif problem := text_problem(filename, header=True, limit=MAX_FILENAME_CHARS):
        problems.append(f"{path}.filename: {problem}")
        ok = False
    if content_type is None:
        content_type = _guess_type(filename) if ok else None
    elif not isinstance(content_type, str) or not _MIME_TYPE.fullmatch(content_type.lower()):
        problems.append(f"{path}.content_type: must be a type/subtype like application/pdf")
        ok = False
    elif content_type.lower().startswith(("multipart/", "message/")):
        # RFC 2046 5.1 and 5.2: neither may be base64-encoded, which keeps attachment bytes exact
        problems.append(f"{path}.content_type: multipart and message types cannot be attached")
        ok = False
    if not ok:
        return None
    assert isinstance(filename, str) and isinstance(content_type, str)
    return filename, content_type.lower()


def _guess_type(filename: object) -> str:
    guessed, encoding = _TYPES.guess_type(str(filename), strict=True)
    # x.tar.gz guesses (application/x-tar, gzip): a compressed tar is not a tar
    if guessed is None or encoding is not None:
        return "application/octet-stream"
    return guessed


def _headers(value: object, problems: list[str]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        problems.append("headers: must be an object of header names to strings")
        return ()
    found: list[tuple[str, str]] = []
    for name, text in value.items():
        path = f"headers.{shown(name)}"
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            problems.append(f"{path}: not a header name (RFC 5322: printable ASCII, no colon)")
        elif name.lower() in OWNED_HEADERS or name.lower().startswith(OWNED_HEADER_PREFIXES):
            problems.append(f"{path}: set by the relay, not by a request")
        elif not isinstance(text, str):
            problems.append(f"{path}: must be a string")
        elif problem := text_problem(text, header=True):
            problems.append(f"{path}: {problem}")
        else:
            found.append((name, text))
    return tuple(found)
