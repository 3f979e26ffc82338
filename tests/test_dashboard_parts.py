"""The dashboard's pure parts: where a login may send the browser, chart geometry, the
filters' text, and reading a message's parts for the preview."""

from __future__ import annotations

import pytest

from admin_http.dashboard.bodies import bodies
from admin_http.dashboard.charts import HEIGHT, Usage, hourly_chart, nice_ceiling
from admin_http.dashboard.filters import age, duration, number, percent, size
from admin_http.dashboard.pages import local_path
from admin_http.dashboard.snippet import form_snippet
from relay.core.model import FormSettings
from relay.message_log_database import HourCount


@pytest.mark.parametrize(
    ("wanted", "landing"),
    [
        ("/messages?status=failed&page=2", "/messages?status=failed&page=2"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/messages\r\nSet-Cookie: x=1", "/"),
        ("/a b", "/"),
    ],
)
def test_local_path_keeps_the_browser_on_the_dashboard(wanted: str | None, landing: str) -> None:
    assert local_path(wanted) == landing


@pytest.mark.parametrize(
    ("value", "ceiling"), [(0, 4), (1, 4), (4, 4), (5, 8), (9, 20), (21, 40), (41, 80), (801, 2000)]
)
def test_nice_ceiling(value: int, ceiling: int) -> None:
    assert nice_ceiling(value) == ceiling


def test_hourly_bars_stack_sent_failed_waiting_from_the_baseline() -> None:
    chart = hourly_chart([HourCount(0.0, 0, 0, 0), HourCount(3600.0, 6, 1, 1)])
    empty, busy = chart.columns
    assert empty.segments == () and empty.total == 0
    assert [s.kind for s in busy.segments] == ["sent", "failed", "waiting"]
    assert busy.segments[0].y + busy.segments[0].height == pytest.approx(chart.baseline)
    assert busy.segments[1].y + busy.segments[1].height == pytest.approx(busy.segments[0].y)
    assert min(s.y for s in busy.segments) >= 0 and chart.baseline < HEIGHT
    assert busy.title == "01:00-02:00 UTC: 8 accepted, 6 sent, 1 failed, 1 waiting"
    assert [value for _, value in chart.ticks] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(
    ("used", "limit", "level", "width"),
    [(0, 100, "ok", 0.0), (69, 100, "ok", 69.0), (70, 100, "warn", 70.0), (95, 100, "high", 95.0),
     (250, 100, "high", 100.0)],
)  # fmt: skip
def test_usage_bars(used: int, limit: int, level: str, width: float) -> None:
    bar = Usage("day", used, limit)
    assert (bar.level, bar.width) == (level, width)


def test_filters_read_as_people_write() -> None:
    assert [age(s) for s in (None, 4.2, 300, 3 * 3600 + 600, 2 * 86400 + 7200)] == [
        "—", "4 s", "5 min", "3 h 10 min", "2 d 2 h",
    ]  # fmt: skip
    assert [duration(s) for s in (None, 0.0123, 1.42)] == ["—", "12 ms", "1.4 s"]
    assert [size(n) for n in (12, 2048, 3 * 1024 * 1024)] == ["12 B", "2.0 KB", "3.0 MB"]
    assert [percent(r) for r in (None, 0.875, 1.0)] == ["—", "87.5 %", "100 %"]
    assert number(1234567) == "1\u202f234\u202f567"


def test_bodies_finds_text_html_and_attachments() -> None:
    content = (
        b"Subject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n'
        b'--m\r\nContent-Type: multipart/alternative; boundary="a"\r\n\r\n'
        b"--a\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9\r\n"
        b"--a\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Caf\xc3\xa9</p>\r\n--a--\r\n"
        b"--m\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="order.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--m--\r\n"
    )
    found = bodies(content)
    assert found.text is not None and found.text.strip() == "Café"
    assert found.html is not None and found.html.strip() == "<p>Café</p>"
    assert [(a.filename, a.content_type, a.size) for a in found.attachments] == [
        ("order.pdf", "application/pdf", 5)
    ]
    assert found.problems == ()


def test_bodies_says_what_it_cannot_show_and_never_raises() -> None:
    unknown = b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nhello\r\n"
    found = bodies(unknown)
    assert found.text is None and found.problems  # said, not raised
    assert bodies(b"").text is not None or bodies(b"").problems == ()
    headers_only = bodies(b"Subject: body deleted\r\n\r\n")
    assert headers_only.html is None


def test_the_form_snippet_has_the_sites_id_fields_and_honeypot() -> None:
    form = FormSettings(
        to=("sales@example.com",),
        required=("email", "message", "phone"),
        reply_to_field="email",
        honeypot_field="website",
    )
    text = form_snippet("https://relay.example.com", "product-page-1", form)
    assert '<form method="post" action="https://relay.example.com/api/send-inquiry">' in text
    assert '<input type="hidden" name="landingPageId" value="product-page-1">' in text
    assert '<input type="email" name="formData[email]" required>' in text
    assert '<textarea name="formData[message]" required></textarea>' in text
    assert '<input name="formData[phone]" required>' in text
    assert '<input name="formData[name]">' in text
    assert 'name="formData[website]" tabindex="-1"' in text
    assert "/api/form-token?landingPageId=product-page-1" in text
