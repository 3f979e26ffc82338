"""/api/v1/domains: sending domains, their DKIM keys, what to publish, DNS verification."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.deps import Api, api_of
from admin_http.errors import not_found
from admin_http.middlewares import ACTOR
from admin_http.schemas import check_view, domain_view, json_body, page_of, paged
from relay.catalog_controller import Invalid
from relay.config import is_domain_name
from relay.core.dkim import Algorithm, is_selector
from relay.core.domain_checks import passed
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
