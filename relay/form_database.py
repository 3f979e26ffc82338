"""SQL for used form tokens (``form_nonces``): a token is good for one submission.

A nonce is recorded by an insert that does nothing on a conflict: the row
that is there already means the token was used. The primary key decides,
so it is exact across processes and nodes sharing the store (PostgreSQL
makes a second insert of the same key wait for the first transaction, then
do nothing). Rows are kept until their token would have expired anyway,
then swept by housekeeping (relay/retention_database.py).

A post's gate (``pass_gates``) runs in the transaction that stores its
message (``queue_database.admit_messages``): the client's count, then the
nonce, per post, so a post is stored exactly when its count was granted and
its nonce was fresh, and a refused post never fails its batch's others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from relay.core.quota import Claim, OverLimit
from relay.tables import form_nonces
from relay.usage_database import claim_usage

c = form_nonces.c


@dataclass(frozen=True)
class UsedNonce:
    nonce: str  # 32 hex digits (relay.core.form_token.TokenOk.nonce)
    site_id: str
    expires_at: float  # no token carrying it passes the age check after this


@dataclass(frozen=True)
class FormGate:
    """What a form post must pass to be stored, in its message's transaction: the count of
    posts from its client's network (``claim``, ``Scope.FORM_IP``) and its token's nonce."""

    claim: Claim
    nonce: UsedNonce


# A gate's answer: the client's limit that refused the post (nothing written), or whether its
# nonce was fresh (True: recorded now; False: the token was used before, the post counted).
Passage = OverLimit | bool


def pass_gates(connection: Connection, gates: Sequence[FormGate]) -> list[Passage]:
    """Each gate in order: its client's count, then, when granted, its nonce.

    On PostgreSQL the nonces are inserted under the counters' lock (taken by
    the claims): a second insert of a nonce waits for the first's transaction,
    which may wait for that lock, and the other way round would deadlock.
    """
    if not gates:
        return []
    verdicts = claim_usage(connection, [g.claim for g in gates])
    granted = [
        g.nonce for g, v in zip(gates, verdicts, strict=True) if not isinstance(v, OverLimit)
    ]
    fresh = iter(record_nonces(connection, granted))
    return [v if isinstance(v, OverLimit) else next(fresh) for v in verdicts]


def record_nonces(connection: Connection, nonces: Sequence[UsedNonce]) -> list[bool]:
    """For each nonce in order: True when it was recorded now, False when it was used before.

    One statement for the batch; of one nonce twice in a batch, the first wins.
    """
    if not nonces:
        return []
    first: dict[str, UsedNonce] = {}
    for used in nonces:
        first.setdefault(used.nonce, used)
    rows = [
        {"nonce": u.nonce, "site_id": u.site_id, "expires_at": u.expires_at} for u in first.values()
    ]
    recorded = set(connection.execute(_RECORD[connection.dialect.name], rows).scalars())
    answers = []
    for used in nonces:
        fresh = used.nonce in recorded and first[used.nonce] is used
        answers.append(fresh)
    return answers


# Built once, with the rows as parameters: a statement holding them (insert().values([...]))
# has no cache key, and SQLAlchemy compiled it for every post (~0.6 ms, ten times its run).
_RECORD = {
    name: dialect.insert(form_nonces)
    .on_conflict_do_nothing(index_elements=["nonce"])
    .returning(c.nonce)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}


def forget_nonces(connection: Connection, nonces: Sequence[str]) -> None:
    """The submissions that used them were not stored: the visitors may send them again."""
    if nonces:
        connection.execute(form_nonces.delete().where(c.nonce.in_(list(nonces))))
