"""Quiet hours: a site's mail to free-mail recipients waits for the morning.

A policy module for relay (README "Policy hooks"). During the quiet hours, RCPT
of a free-mail address (gmail.com, yahoo.com, outlook.com, ...) for one of the
quiet sites is answered 451: the sending app keeps the message and tries again
later, as SMTP clients do; every other recipient, and every other site, goes
through at once. The relay's own checks have passed before this hook runs.

    policy:
      module: examples/policy_quiet_hours.py

Set with environment variables, read when the relay loads the module (at start
and at each reload: SIGHUP or POST /api/v1/reload):

    QUIET_SITES   site ids, comma-separated          (default: newsletter)
    QUIET_HOURS   start-end, local 24 h clock; may wrap midnight, 0-24 is all day
                                                     (default: 22-7)
    QUIET_TZ      IANA time zone of those hours      (default: Europe/Berlin)
"""

from __future__ import annotations

import os
from datetime import datetime
from zoneinfo import ZoneInfo

from relay.policy import Accept, RcptFacts, SmtpReply, TempFail

FREE_MAIL = frozenset(
    {
        "aol.com",
        "gmail.com",
        "gmx.de",
        "gmx.net",
        "googlemail.com",
        "hotmail.com",
        "icloud.com",
        "live.com",
        "mail.com",
        "me.com",
        "msn.com",
        "outlook.com",
        "proton.me",
        "protonmail.com",
        "web.de",
        "yahoo.co.uk",
        "yahoo.com",
        "yandex.ru",
    }
)
SITES = frozenset(s.strip() for s in os.environ.get("QUIET_SITES", "newsletter").split(",") if s)
START, END = (int(hour) for hour in os.environ.get("QUIET_HOURS", "22-7").split("-"))
ZONE = ZoneInfo(os.environ.get("QUIET_TZ", "Europe/Berlin"))
if not (0 <= START <= 24 and 0 <= END <= 24):
    raise ValueError(f"QUIET_HOURS must be start-end with hours 0 to 24, not {START}-{END}")


def is_quiet(hour: int) -> bool:
    """Whether ``hour`` (0-23) lies in START-END, which may wrap midnight (22-7)."""
    if START <= END:
        return START <= hour < END
    return hour >= START or hour < END


def on_rcpt(facts: RcptFacts) -> Accept | TempFail:
    if facts.site_id not in SITES:
        return Accept()
    if facts.recipient.rpartition("@")[2].lower() not in FREE_MAIL:
        return Accept()
    if not is_quiet(datetime.now(ZONE).hour):
        return Accept()
    # RFC 3463 4.7.0: a temporary refusal for a policy reason.
    return TempFail(
        SmtpReply(
            451,
            f"4.7.0 Quiet hours {START:02d}:00-{END:02d}:00 {ZONE.key} for free-mail "
            "recipients; try again later",
        )
    )
