"""Campaigns: the list, a new campaign, a campaign's page with its live progress, its actions
and its recipients.

Everything goes through CampaignController, as /api/v1/campaigns does. The campaign page
polls ``GET /campaigns/{id}/progress.json`` (this session's cookie, like any page) from
the static script: counts, the bar's segments, the average rate since the start and the
ETA, both from ``core.campaigns`` (``measured_rate``, ``eta_seconds``: the slower of the
asked and the measured rate), as the API computes them. The script adds the rate over
its last polls ("now"); the server keeps no samples.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

from aiohttp import web

from admin_http.campaigns_view import campaign_view
from admin_http.dashboard.filters import age, number, when
from admin_http.dashboard.pages import page, page_number, pager, see_other
from admin_http.dashboard.session import flash
from admin_http.deps import api_of
from relay.campaign_controller import CampaignController
from relay.catalog_controller import Conflict, Invalid
from relay.core.campaigns import (
    FINAL,
    Action,
    Campaign,
    CampaignStatus,
    NotAllowed,
    RecipientState,
    transition,
)

PAGE_SIZE = 50
SEGMENTS = ("sent", "failed", "skipped", "queued")  # left to right in the bar
RECIPIENT_TABS = ("", *RecipientState)  # "": every recipient
_PAST = {
    Action.START: "started",
    Action.PAUSE: "paused",
    Action.RESUME: "resumed",
    Action.CANCEL: "cancelled",
}
_AFTER = {
    Action.PAUSE: ": its messages still waiting are held until it is resumed",
    Action.CANCEL: ": no more messages are made, and those still waiting are not sent",
}


def _controller(request: web.Request) -> CampaignController:
    controller = api_of(request).campaigns
    if controller is None:
        raise web.HTTPNotFound()
    return controller


def _path(campaign_id: str) -> str:
    return f"/campaigns/{quote(campaign_id, safe='')}"


def allowed_actions(status: CampaignStatus) -> list[str]:
    return [a.value for a in Action if not isinstance(transition(status, a), NotAllowed)]


def progress(c: Campaign, now: float) -> dict[str, Any]:
    """What the bar and the figures beside it show, for the page and for progress.json.

    The bar's scale is the audience counted at the start (at creation for a draft), or the
    contacts reached when more joined the audience since. Segment x and width are in
    percent of the bar (SVG attributes: the policy allows no inline style)."""
    api = campaign_view(c, now)
    counts = {k: int(api[f"{k}_count"]) for k in SEGMENTS}
    scale = max(c.total_contacts, c.reached)
    segments, x = [], 0.0
    for kind in SEGMENTS:
        width = counts[kind] / scale * 100 if scale else 0.0
        segments.append({"kind": kind, "x": round(x, 3), "width": round(width, 3)})
        x += width
    done = counts["sent"] + counts["failed"] + counts["skipped"]
    eta = api["eta_seconds"]
    measured = api["rate_per_minute_measured"]
    final = c.status in FINAL
    return {
        "id": c.id,
        "status": c.status.value,
        "final": final,
        "actions": allowed_actions(c.status),
        **counts,
        "total": c.total_contacts,
        "scale": scale,
        "done": done,
        "percent": round(done / scale * 100, 1) if scale else (100.0 if final else 0.0),
        "segments": segments,
        "summary": f"{number(counts['sent'])} / {number(c.total_contacts)}",
        "value_text": (
            f"{number(done)} of {number(scale)} contacts done: {number(counts['sent'])} sent, "
            f"{number(counts['failed'])} failed, {number(counts['skipped'])} skipped, "
            f"{number(counts['queued'])} queued"
        ),
        "rate_per_minute": c.rate_per_minute,
        "rate_measured": measured,
        "rate_measured_text": "—" if measured is None else f"{number(measured)} / min",
        "eta_seconds": eta,
        "eta_text": _eta_text(c, eta),
        "started_at": f"{when(c.started_at)} UTC" if c.started_at else "—",
        "finished_at": f"{when(c.finished_at)} UTC" if c.finished_at else "—",
        "note": c.last_error,
        "now": now,
    }


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _eta_text(c: Campaign, eta: int | None) -> str:
    if c.status in FINAL:
        return "finished"
    if c.status is not CampaignStatus.IN_PROGRESS:
        return f"— ({c.status.value.replace('_', ' ')})"
    if eta is None:
        return "— (measuring)"
    if eta < 60:
        return "less than a second" if eta == 0 else f"{eta} s"
    return f"{-(-eta // 60)} min" if eta < 3600 else age(eta)  # minutes rounded up


# -- Pages


async def campaign_list(request: web.Request) -> web.Response:
    api = api_of(request)
    sites = sorted(s.id for s in api.directory().sites)
    site = request.query.get("site", "")
    status = request.query.get("status", "")
    status = status if status in tuple(CampaignStatus) else ""
    page_no = page_number(request.query.get("page"), 1, range(1, 1_000_000))
    found, total = await _controller(request).listing(
        site or None, status or None, (page_no - 1) * PAGE_SIZE, PAGE_SIZE
    )
    kept = {k: v for k, v in (("site", site), ("status", status)) if v}
    now = api.clock()
    return await page(
        request,
        "campaigns.html",
        {
            "rows": [(c, progress(c, now)) for c in found],
            "sites": sites,
            "statuses": list(CampaignStatus),
            "given": {"site": site, "status": status},
            "filtered": bool(kept),
            "pager": pager("/campaigns", kept, page_no, PAGE_SIZE, len(found), total),
            "can_create": bool(sites),
        },
        section="campaigns",
        title="Campaigns",
    )


async def campaign_page(request: web.Request) -> web.Response:
    api = api_of(request)
    controller = _controller(request)
    campaign = await controller.get(request.match_info["id"])
    status = request.query.get("status", "")
    status = status if status in tuple(RecipientState) else ""
    page_no = page_number(request.query.get("page"), 1, range(1, 1_000_000))
    rows, total = await controller.recipients(
        campaign.id, status or None, (page_no - 1) * PAGE_SIZE, PAGE_SIZE
    )
    here = _path(campaign.id)
    kept = {"status": status} if status else {}
    return await page(
        request,
        "campaign.html",
        {
            "c": campaign,
            "p": progress(campaign, api.clock()),
            "audience": campaign.audience.tags,
            "here": here,
            "recipients": rows,
            "tabs": RECIPIENT_TABS,
            "tab": status,
            "counts": {
                "": campaign.reached,
                "queued": campaign.queued_count,
                "sent": campaign.sent_count,
                "failed": campaign.failed_count,
                "skipped": campaign.skipped_count,
            },
            "pager": pager(here, kept, page_no, PAGE_SIZE, len(rows), total),
        },
        section="campaigns",
        title=_short(f"Campaign {campaign.name}"),
    )


async def progress_json(request: web.Request) -> web.Response:
    """GET /campaigns/{id}/progress.json: what the page's script polls."""
    campaign = await _controller(request).get(request.match_info["id"])
    response = web.json_response(progress(campaign, api_of(request).clock()))
    response.headers["Cache-Control"] = "no-store"
    return response


# -- Actions


async def act(request: web.Request) -> web.Response:
    """POST /campaigns/{id}/start|pause|resume|cancel; a change not allowed is a flash error."""
    campaign_id = request.match_info["id"]
    action = Action(request.match_info["action"])
    try:
        changed = await _controller(request).act(campaign_id, action)
    except Conflict as error:
        await flash(request, f"Not {_PAST[action]}: {error}.", "error")
        return see_other(_path(campaign_id))
    await flash(request, f"Campaign {changed.name} {_PAST[action]}{_AFTER.get(action, '')}.")
    return see_other(_path(campaign_id))


async def confirm_cancel(request: web.Request) -> web.Response:
    campaign = await _controller(request).get(request.match_info["id"])
    return await page(
        request,
        "campaign_cancel.html",
        {"c": campaign, "p": progress(campaign, api_of(request).clock())},
        section="campaigns",
        title="Cancel a campaign",
    )


# -- New


def _empty() -> dict[str, Any]:
    return {
        "site": "", "name": "", "content": "parts", "template": "", "subject": "",
        "text": "", "html": "", "audience": "all", "tags": "", "rate_per_minute": "",
        "schedule_at": "",
    }  # fmt: skip


def _values(form: Any) -> dict[str, Any]:
    return {key: str(form.get(key, default)) for key, default in _empty().items()}


def campaign_body(v: dict[str, Any]) -> dict[str, Any]:
    """The API's campaign body from the form's values (problems are the controller's to
    name: a rate that is not a number goes through as text)."""
    body: dict[str, Any] = {"site": v["site"], "name": v["name"].strip()}
    if v["content"] == "template":
        body["template"] = v["template"]
    else:
        body["subject"] = v["subject"]
        for part in ("text", "html"):
            if v[part].strip():
                body[part] = v[part]
    tags = [t.strip() for t in v["tags"].split(",") if t.strip()]
    body["audience"] = {"tags": tags} if v["audience"] == "tags" else "all"
    rate = v["rate_per_minute"].strip()
    if rate:
        body["rate_per_minute"] = int(rate) if rate.isascii() and rate.isdigit() else rate
    if v["schedule_at"].strip():  # a datetime-local input: UTC, as the form says
        body["schedule_at"] = v["schedule_at"].strip()
    return body


async def new_campaign(request: web.Request) -> web.Response:
    values = _empty()
    values["site"] = request.query.get("site", "")
    return await _form(request, values, [])


async def create_campaign(request: web.Request) -> web.Response:
    values = _values(await request.post())
    try:
        created = await _controller(request).create(campaign_body(values))
    except Invalid as error:
        return await _form(request, values, error.problems, status=422)
    await flash(
        request,
        f"Campaign {created.name} created as a {created.status.value}"
        + (": press Start to send it." if created.status is CampaignStatus.DRAFT else "."),
    )
    return see_other(_path(created.id))


async def _form(
    request: web.Request, values: dict[str, Any], problems: list[str], status: int = 200
) -> web.Response:
    directory = api_of(request).directory()
    now = dt.datetime.fromtimestamp(api_of(request).clock(), dt.UTC)
    return await page(
        request,
        "campaign_form.html",
        {
            "v": values,
            "problems": problems,
            "sites": sorted(s.id for s in directory.sites),
            "templates": sorted(t.name for t in directory.templates),
            "min_schedule": now.strftime("%Y-%m-%dT%H:%M"),
        },
        section="campaigns",
        title="New campaign",
        status=status,
    )
