"""What a policy module imports (README "Policy hooks"): the facts its hooks get, the answers.

    from relay.policy import Accept, Reject, TempFail, SmtpReply, AddHeaders, RouteChoice

    def on_rcpt(facts: RcptFacts) -> Accept | Reject | TempFail: ...

A stable facade over ``relay.core``: operators import these names, never the core's modules.
"""

from relay.core.model import SmtpReply
from relay.core.policy import Accept, Reject, TempFail
from relay.core.policy_hooks import (
    AddHeaders,
    ConnectFacts,
    DataFacts,
    MailFacts,
    RcptFacts,
    RouteChoice,
    RouteFacts,
    UpstreamFacts,
)

__all__ = [
    "Accept",
    "AddHeaders",
    "ConnectFacts",
    "DataFacts",
    "MailFacts",
    "RcptFacts",
    "Reject",
    "RouteChoice",
    "RouteFacts",
    "SmtpReply",
    "TempFail",
    "UpstreamFacts",
]
