"""/api/v1/domains: sending domains, their DKIM keys, what to publish, DNS verification."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from admin_http.deps import Api, api_of
from admin_http.errors import ApiError, not_found
from admin_http.middlewares import ACTOR
from admin_http.schemas import check_view, domain_view, json_body, page_of, paged
from relay.catalog_controller import Invalid
from relay.config import is_domain_name
from relay.core.dkim import Algorithm, is_selector
from relay.core.domain_checks import RETIRE_AFTER_DAYS, passed, unconfirmed_key
from relay.core.domains import Domain
from relay.domain_verifier import Verification


def _view(api: Api, domain: Domain) -> dict[str, Any]:
    latest = api.domains.latest.get(domain.name)
    return domain_view(domain, latest.checks if latest else None)


def _domain(api: Api, request: web.Request) -> Domain:
    name = request.match_info["name"]
    domain = api.directory().domain(name)
    if domain is None:
        raise not_found(f"no domain {name!r}")
    return domain


async def list_domains(request: web.Request) -> web.Response:
    api = api_of(request)
    page, size = page_of(request)
    return web.json_response(paged([_view(api, d) for d in api.directory().domains], page, size))


async def create_domain(request: web.Request) -> web.Response:
    """A new domain with a fresh active key; the answer lists the records to publish."""
    api = api_of(request)
    body = await json_body(request)
    name, selector = body.get("name"), body.get("selector", "relay1")
    algorithm = body.get("algorithm", Algorithm.RSA.value)
    problems = []
    if not isinstance(name, str) or not is_domain_name(name):
        problems.append("domain.name: a domain name such as example.com is required")
    if not isinstance(selector, str) or not is_selector(selector):
        problems.append("domain.selector: not a DKIM selector (letters, digits, '-', '.')")
    if algorithm not in {a.value for a in Algorithm}:
        problems.append(f"domain.algorithm: one of {', '.join(a.value for a in Algorithm)}")
    unknown = sorted(set(body) - {"name", "selector", "algorithm"})
    problems += [f"domain.{key}: unknown key" for key in unknown]
    if problems:
        raise Invalid(problems)
    assert isinstance(name, str) and isinstance(selector, str)
    domain = await api.catalog.create_domain(request[ACTOR], name, selector, Algorithm(algorithm))
    view = _view(api, domain)
    view["records"] = [check_view(c) for c in api.domains.records(domain.name)]
    return web.json_response(view, status=201)


async def get_domain(request: web.Request) -> web.Response:
    api = api_of(request)
    return web.json_response(_view(api, _domain(api, request)))


async def add_key(request: web.Request) -> web.Response:
    """Rotation, step 1: a new key, published ahead; the answer lists the records to publish."""
    api = api_of(request)
    domain = _domain(api, request)
    body = await json_body(request)
    selector = body.get("selector")
    algorithm = body.get("algorithm", Algorithm.RSA.value)
    problems = []
    if not isinstance(selector, str) or not is_selector(selector):
        problems.append("key.selector: a DKIM selector is required (letters, digits, '-', '.')")
    if algorithm not in {a.value for a in Algorithm}:
        problems.append(f"key.algorithm: one of {', '.join(a.value for a in Algorithm)}")
    problems += [f"key.{key}: unknown key" for key in sorted(set(body) - {"selector", "algorithm"})]
    if problems:
        raise Invalid(problems)
    assert isinstance(selector, str)
    domain = await api.catalog.add_next_key(
        request[ACTOR], domain.name, selector, Algorithm(algorithm)
    )
    view = _view(api, domain)
    view["records"] = [check_view(c) for c in api.domains.records(domain.name)]
    return web.json_response(view, status=201)


async def activate_key(request: web.Request) -> web.Response:
    """Rotation, step 2: the next key signs; the active one retires, published until a date.

    Refused (409) while the last DNS check has not found the next key's record
    published and matching, unless ``force`` is true.
    """
    api = api_of(request)
    domain = _domain(api, request)
    selector = request.match_info["selector"]
    body = await json_body(request, required=False)
    today = dt.datetime.now(dt.UTC).date()
    retire_text = body.get("retire_until", (today + dt.timedelta(RETIRE_AFTER_DAYS)).isoformat())
    force = body.get("force", False)
    problems = [f"key.{key}: unknown key" for key in sorted(set(body) - {"retire_until", "force"})]
    retire_until = _date(retire_text)
    if retire_until is None or retire_until < today:
        problems.append("key.retire_until: a date (YYYY-MM-DD), today or later")
    if not isinstance(force, bool):
        problems.append("key.force: true or false")
    if problems:
        raise Invalid(problems)
    assert retire_until is not None
    latest = api.domains.latest.get(domain.name)
    checks = latest.checks if latest is not None else None
    if not force and (problem := unconfirmed_key(checks, selector)):
        raise ApiError(409, "conflict", problem)
    domain = await api.catalog.activate_key(request[ACTOR], domain.name, selector, retire_until)
    return web.json_response(_view(api, domain))


def _date(value: object) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


async def delete_domain(request: web.Request) -> web.Response:
    api = api_of(request)
    domain = _domain(api, request)
    await api.catalog.delete_domain(request[ACTOR], domain.name)
    return web.Response(status=204)


async def dns_records(request: web.Request) -> web.Response:
    """Every record the domain needs, as zone-file lines, whatever DNS holds now."""
    api = api_of(request)
    domain = _domain(api, request)
    records = api.domains.records(domain.name)
    return web.json_response({"domain": domain.name, "records": [check_view(c) for c in records]})


async def verify_domain(request: web.Request) -> web.Response:
    api = api_of(request)
    domain = _domain(api, request)
    result = await api.domains.verify(domain.name)
    return web.json_response(verification_view(result))


def verification_view(result: Verification) -> dict[str, Any]:
    return {
        "domain": result.domain,
        "verified": passed(result.checks),
        "checks": [check_view(c) for c in result.checks],
        "preflights": [
            {
                "site": p.site,
                "upstream": p.upstream,
                "status": p.status.value,
                "spf": p.spf,
                "dkim": p.dkim,
                "detail": p.detail,
            }
            for p in result.preflights
        ],
    }
