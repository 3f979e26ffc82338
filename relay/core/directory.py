"""The live set of sites, credentials, upstreams and domains, indexed for lookups.

Built from the configuration (and later the store); replaced as a whole on
reload, so a session always sees one consistent version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.core.addresses import sender_matches
from relay.core.dkim import SigningKey
from relay.core.domains import Domain
from relay.core.model import ApiKey, Credential, Site, Upstream
from relay.core.templates import Template


@dataclass(frozen=True)
class Directory:
    sites: tuple[Site, ...]
    credentials: tuple[Credential, ...]
    upstreams: tuple[Upstream, ...]
    domains: tuple[Domain, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    templates: tuple[Template, ...] = ()
    _sites: dict[str, Site] = field(init=False, repr=False, compare=False)
    _credentials: dict[str, Credential] = field(init=False, repr=False, compare=False)
    _upstreams: dict[str, Upstream] = field(init=False, repr=False, compare=False)
    _domains: dict[str, Domain] = field(init=False, repr=False, compare=False)
    _api_keys: dict[str, ApiKey] = field(init=False, repr=False, compare=False)
    _templates: dict[str, Template] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sites", {s.id: s for s in self.sites})
        object.__setattr__(self, "_credentials", {c.username: c for c in self.credentials})
        object.__setattr__(self, "_upstreams", {u.name: u for u in self.upstreams})
        object.__setattr__(self, "_domains", {d.name: d for d in self.domains})
        object.__setattr__(self, "_api_keys", {k.key_hash: k for k in self.api_keys})
        object.__setattr__(self, "_templates", {t.name: t for t in self.templates})

    @classmethod
    def of(
        cls,
        sites: Iterable[Site],
        credentials: Iterable[Credential],
        upstreams: Iterable[Upstream],
        domains: Iterable[Domain] = (),
        api_keys: Iterable[ApiKey] = (),
        templates: Iterable[Template] = (),
    ) -> Directory:
        return cls(
            tuple(sites),
            tuple(credentials),
            tuple(upstreams),
            tuple(domains),
            tuple(api_keys),
            tuple(templates),
        )

    def site(self, site_id: str) -> Site | None:
        return self._sites.get(site_id)

    def credential(self, username: str) -> Credential | None:
        return self._credentials.get(username)

    def upstream(self, name: str) -> Upstream | None:
        return self._upstreams.get(name)

    def api_key(self, key_hash: str) -> ApiKey | None:
        """The key with this hash (a dict lookup by a SHA-256 digest tells a timer nothing)."""
        return self._api_keys.get(key_hash)

    def template(self, name: str) -> Template | None:
        return self._templates.get(name)

    def domain(self, name: str) -> Domain | None:
        return self._domains.get(name.lower())

    def signing_key(self, domain: str) -> SigningKey | None:
        """The active DKIM key of a From domain, if it has one."""
        found = self.domain(domain)
        return found.signing_key if found else None

    def site_for_sender(self, address: str) -> Site | None:
        """The first site (in configuration order) whose `senders` match the address."""
        return next(
            (s for s in self.sites if s.senders and sender_matches(address, s.senders)), None
        )
