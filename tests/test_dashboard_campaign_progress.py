"""The campaign page's progress figures (admin_http/dashboard/campaigns_view.progress): the bar's
segments, its scale, the percent done, and the time-left text, from a campaign's counts."""

from __future__ import annotations

from dataclasses import replace

from admin_http.dashboard.campaigns_view import allowed_actions, campaign_body, progress
from relay.core.campaigns import Audience, Campaign, CampaignStatus

NOW = 1_800_000_000.0
RUNNING = Campaign(
    id="cmp_1", site_id="shop", name="News", status=CampaignStatus.IN_PROGRESS,
    template=None, subject="Hi", text="Hello", html=None, audience=Audience(),
    rate_per_minute=600, schedule_at=None, cursor=0, generated=False, total_contacts=200,
    queued_count=10, sent_count=60, failed_count=5, skipped_count=25, lease_owner=None,
    leased_until=None, last_error=None, created_at=NOW - 120, updated_at=NOW,
    started_at=NOW - 60, finished_at=None,
)  # fmt: skip


def test_the_bar_stacks_sent_failed_skipped_queued_over_the_audience() -> None:
    p = progress(RUNNING, NOW)
    assert p["segments"] == [
        {"kind": "sent", "x": 0.0, "width": 30.0},
        {"kind": "failed", "x": 30.0, "width": 2.5},
        {"kind": "skipped", "x": 32.5, "width": 12.5},
        {"kind": "queued", "x": 45.0, "width": 5.0},
    ]
    assert (p["done"], p["scale"], p["percent"], p["summary"]) == (90, 200, 45.0, "60 / 200")
    assert p["value_text"] == ("90 of 200 contacts done: 60 sent, 5 failed, 25 skipped, 10 queued")
    # 60 sent in 60 s: 60 a minute measured, slower than the 600 asked; 100 unreached and
    # 10 queued left: 110 s.
    assert (p["rate_measured"], p["eta_seconds"], p["eta_text"]) == (60.0, 110, "2 min")
    assert p["actions"] == ["pause", "cancel"] and not p["final"]


def test_more_reached_than_counted_at_the_start_scales_the_bar_to_what_was_reached() -> None:
    grown = replace(RUNNING, total_contacts=50, sent_count=80, queued_count=0)
    p = progress(grown, NOW)
    assert p["scale"] == 110 and abs(sum(s["width"] for s in p["segments"]) - 100) < 0.01


def test_texts_before_the_start_while_paused_and_at_the_end() -> None:
    draft = replace(
        RUNNING, status=CampaignStatus.DRAFT, total_contacts=0, queued_count=0,
        sent_count=0, failed_count=0, skipped_count=0, started_at=None,
    )  # fmt: skip
    p = progress(draft, NOW)
    assert (p["percent"], p["eta_text"], p["started_at"], p["rate_measured_text"]) == (
        0.0, "— (draft)", "—", "—",
    )  # fmt: skip
    assert all(s["width"] == 0 for s in p["segments"])
    assert progress(replace(RUNNING, status=CampaignStatus.PAUSED), NOW)["eta_text"] == (
        "— (paused)"
    )
    done = replace(
        RUNNING, status=CampaignStatus.COMPLETED, queued_count=0, finished_at=NOW,
        total_contacts=90,
    )  # fmt: skip
    p = progress(done, NOW)
    assert (p["percent"], p["eta_text"], p["final"], p["actions"]) == (100.0, "finished", True, [])
    assert p["finished_at"] == "2027-01-15 08:00:00 UTC"


def test_actions_follow_the_lifecycle() -> None:
    assert allowed_actions(CampaignStatus.SCHEDULED) == ["start", "pause", "cancel"]
    assert allowed_actions(CampaignStatus.PAUSED) == ["resume", "cancel"]


def test_the_form_becomes_the_apis_body() -> None:
    values = {
        "site": "shop", "name": " Spring ", "content": "parts", "template": "news",
        "subject": "Hi", "text": "Hello", "html": " ", "audience": "tags",
        "tags": "news, , vip", "rate_per_minute": "120", "schedule_at": "",
    }  # fmt: skip
    assert campaign_body(values) == {
        "site": "shop", "name": "Spring", "subject": "Hi", "text": "Hello",
        "audience": {"tags": ["news", "vip"]}, "rate_per_minute": 120,
    }  # fmt: skip
    templated = {**values, "content": "template", "audience": "all", "rate_per_minute": "x"}
    assert campaign_body(templated) == {
        "site": "shop", "name": "Spring", "template": "news", "audience": "all",
        "rate_per_minute": "x",
    }  # fmt: skip
