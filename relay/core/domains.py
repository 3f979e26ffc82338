"""Sending domains and their DKIM selectors, as the checks and the signer see them.

A domain has at most one *active* selector (it signs), may have a *next* one
(published ahead of a rotation, not signing yet) and *retired* ones (no longer
signing, kept in DNS until their date so mail already sent still verifies).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from relay.core.dkim import Algorithm, PrivateKey, SigningKey, algorithm_of, public_key_text


class KeyState(enum.StrEnum):
    ACTIVE = "active"
    NEXT = "next"
    RETIRED = "retired"


@dataclass(frozen=True)
class DomainKey:
    selector: str
    state: KeyState
    algorithm: Algorithm
    public_key: str | None  # the p= value DNS must hold; None: a retired key whose file is gone
    retire_until: dt.date | None = None  # retired keys: keep the record published until then

    @classmethod
    def of(
        cls, selector: str, state: KeyState, key: PrivateKey, until: dt.date | None = None
    ) -> DomainKey:
        return cls(selector, state, algorithm_of(key), public_key_text(key), until)


@dataclass(frozen=True)
class Domain:
    name: str
    keys: tuple[DomainKey, ...] = ()
    signing_key: SigningKey | None = None  # the active selector's private key
    managed_by_file: bool = True


def activation_problem(states: dict[str, KeyState], selector: str) -> str | None:
    """Why ``selector`` cannot become the active key now, or None if it can."""
    state = states.get(selector)
    if state is None:
        return f"no selector {selector!r}; add the key first"
    if state is KeyState.ACTIVE:
        return f"selector {selector!r} is already active"
    if state is KeyState.RETIRED:
        return f"selector {selector!r} is retired; make a new key instead of reusing it"
    return None
