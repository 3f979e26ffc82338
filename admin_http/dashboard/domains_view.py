"""Domains: DKIM keys, the exact records to publish, DNS checks with their verdicts, and the
preflight of every (site, upstream) pair; verify now; add a domain (a new active key).

The checks shown are the last verification (periodic, or "Verify now"); the
records to publish are computed from the configuration without asking DNS.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

from aiohttp import web

from admin_http.dashboard.pages import page, page_of, see_other
from admin_http.dashboard.session import flash
from admin_http.deps import Api, api_of
from admin_http.middlewares import ACTOR
from relay.catalog_controller import Conflict, Invalid, NotFound
from relay.config import is_domain_name
from relay.core.dkim import Algorithm, is_selector
from relay.core.domain_checks import RETIRE_AFTER_DAYS, Status, passed, unconfirmed_key
from relay.core.domains import Domain
from relay.domain_database import DomainConflict
from relay.domain_verifier import Verification


def _domain(api: Api, name: str) -> Domain:
    domain = api.directory().domain(name)
    if domain is None:
        raise NotFound(f"No domain {name!r}.")
    return domain


async def domain_list(request: web.Request) -> web.Response:
    api = api_of(request)
    domains, pages = page_of(
        request, sorted(api.directory().domains, key=lambda d: d.name), "/domains"
    )
    rows = []
    for domain in domains:
        latest = api.domains.latest.get(domain.name)
        counts = {s.value: 0 for s in Status}
        for check in latest.checks if latest else []:
            counts[check.status.value] += 1
        rows.append(
            {
                "domain": domain,
                "checked": latest is not None,
                "verified": passed(latest.checks) if latest else False,
                "counts": counts,
            }
        )
    return await page(
        request,
        "domains.html",
        {
            "rows": rows,
            "pager": pages,
            "config_path": str(api.config().path),
            "algorithms": [a.value for a in Algorithm],
        },
        section="domains",
        title="Domains",
    )


async def create_domain(request: web.Request) -> web.Response:
    api = api_of(request)
    form = await request.post()
    name = str(form.get("name", "")).strip().lower()
    selector = str(form.get("selector", "")).strip() or "relay1"
    algorithm = str(form.get("algorithm", Algorithm.RSA.value))
    problems = []
    if not is_domain_name(name):
        problems.append("domain.name: a domain name such as example.com is required")
    if not is_selector(selector):
        problems.append("domain.selector: not a DKIM selector (letters, digits, '-', '.')")
    if algorithm not in {a.value for a in Algorithm}:
        problems.append(f"domain.algorithm: one of {', '.join(a.value for a in Algorithm)}")
    try:
        if problems:
            raise Invalid(problems)
        domain = await api.catalog.create_domain(
            request[ACTOR], name, selector, Algorithm(algorithm)
        )
    except (Invalid, Conflict) as error:
        text = "; ".join(error.problems) if isinstance(error, Invalid) else str(error)
        await flash(request, f"No domain added: {text}", "error")
        return see_other("/domains")
    await flash(request, f"Domain {domain.name} added with the DKIM key {selector}.")
    return see_other(f"/domains/{quote(domain.name, safe='')}")


async def domain_page(request: web.Request) -> web.Response:
    api = api_of(request)
    domain = _domain(api, request.match_info["name"])
    return await _render(request, api, domain, api.domains.latest.get(domain.name), fresh=False)


async def verify(request: web.Request) -> web.Response:
    """Ask DNS now; the answer is recorded as the domain's latest, as a periodic check is."""
    api = api_of(request)
    domain = _domain(api, request.match_info["name"])
    result = await api.domains.verify(domain.name)
    return await _render(request, api, domain, result, fresh=True)


async def _render(
    request: web.Request, api: Api, domain: Domain, latest: Verification | None, fresh: bool
) -> web.Response:
    return await page(
        request,
        "domain.html",
        {
            "d": domain,
            "records": [c for c in api.domains.records(domain.name) if c.publish],
            "latest": latest,
            "verified": passed(latest.checks) if latest else False,
            "fresh": fresh,
            "config_path": str(api.config().path),
            "algorithms": [a.value for a in Algorithm],
            "retire_default": (_today() + dt.timedelta(RETIRE_AFTER_DAYS)).isoformat(),
            "unconfirmed": {
                k.selector: unconfirmed_key(latest.checks if latest else None, k.selector)
                for k in domain.keys
            },
        },
        section="domains",
        title=domain.name,
    )


async def delete_domain(request: web.Request) -> web.Response:
    api = api_of(request)
    domain = _domain(api, request.match_info["name"])
    await api.catalog.delete_domain(request[ACTOR], domain.name)
    await flash(request, f"Domain {domain.name} deleted: mail from it is no longer signed.")
    return see_other("/domains")


async def add_key(request: web.Request) -> web.Response:
    """Rotation, step 1 (the API's POST .../keys)."""
    api = api_of(request)
    domain = _domain(api, request.match_info["name"])
    form = await request.post()
    selector = str(form.get("selector", "")).strip()
    algorithm = str(form.get("algorithm", Algorithm.RSA.value))
    back = see_other(f"/domains/{quote(domain.name, safe='')}")
    if not is_selector(selector) or algorithm not in {a.value for a in Algorithm}:
        await flash(request, "No key added: a DKIM selector (letters, digits, '-', '.').", "error")
        return back
    try:
        await api.catalog.add_next_key(request[ACTOR], domain.name, selector, Algorithm(algorithm))
    except (Conflict, DomainConflict) as error:
        await flash(request, f"No key added: {error}", "error")
        return back
    await flash(request, f"Key {selector} added as next: publish its record below.")
    return back


async def activate_key(request: web.Request) -> web.Response:
    """Rotation, step 2 (the API's POST .../keys/{selector}/activate)."""
    api = api_of(request)
    domain = _domain(api, request.match_info["name"])
    selector = request.match_info["selector"]
    form = await request.post()
    back = see_other(f"/domains/{quote(domain.name, safe='')}")
    try:
        retire_until = dt.date.fromisoformat(str(form.get("retire_until", "")))
    except ValueError:
        retire_until = None
    if retire_until is None or retire_until < _today():
        await flash(request, "Not activated: the old key's date must be today or later.", "error")
        return back
    latest = api.domains.latest.get(domain.name)
    problem = unconfirmed_key(latest.checks if latest else None, selector)
    if problem and not form.get("force"):
        await flash(request, f"Not activated: {problem}.", "error")
        return back
    try:
        await api.catalog.activate_key(request[ACTOR], domain.name, selector, retire_until)
    except (Conflict, DomainConflict) as error:
        await flash(request, f"Not activated: {error}", "error")
        return back
    await flash(
        request,
        f"{selector} signs from now on; the old key stays published until "
        f"{retire_until.isoformat()}.",
    )
    return back


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
