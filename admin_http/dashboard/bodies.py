"""What a message shows in its preview: its text part, its HTML part, its attachments.

Pure: bytes in, decoded text out, never raising on a malformed message (a
part that does not decode is shown as missing, and why). The HTML is never
put into a dashboard page: it is served on its own, to a sandboxed iframe,
under a policy that runs no script and loads nothing remote until asked
(admin_http/dashboard/messages_view.py).
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser

MAX_PREVIEW_CHARS = 2_000_000  # of each part: a bigger one is cut, and said so


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int  # bytes, decoded


@dataclass(frozen=True)
class Bodies:
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    problems: tuple[str, ...] = field(default=())  # parts that could not be shown, and why


def bodies(content: bytes) -> Bodies:
    try:
        message = BytesParser(policy=email.policy.default).parsebytes(content)
    except Exception as error:  # the parser is lenient; anything else is shown, not raised
        return Bodies(problems=(f"the message does not parse ({type(error).__name__})",))
    assert isinstance(message, EmailMessage)
    problems: list[str] = []
    text = _part(message, "plain", problems)
    html = _part(message, "html", problems)
    attachments = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        attachments.append(
            Attachment(
                part.get_filename() or "(no name)",
                part.get_content_type(),
                len(payload) if isinstance(payload, bytes) else 0,
            )
        )
    return Bodies(text, html, tuple(attachments), tuple(problems))


def _part(message: EmailMessage, subtype: str, problems: list[str]) -> str | None:
    try:
        part = message.get_body(preferencelist=(subtype,))
        if part is None:
            return None
        decoded = part.get_content()
    except Exception as error:  # unknown charset, broken transfer encoding: said, not raised
        problems.append(f"the {subtype} part does not decode ({type(error).__name__})")
        return None
    if not isinstance(decoded, str):
        return None
    if len(decoded) > MAX_PREVIEW_CHARS:
        problems.append(f"the {subtype} part is cut at {MAX_PREVIEW_CHARS:,} characters")
        return decoded[:MAX_PREVIEW_CHARS]
    return decoded
