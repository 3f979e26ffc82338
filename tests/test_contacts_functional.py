"""A site's contacts through the admin API of a relay running in-process, on a real SQLite file
(and PostgreSQL where the test says): one, many and CSV imports, bad rows reported while the
good ones import, filters, PATCH, DELETE, bounds, and a client that goes away mid-import.

Every call is real HTTP on loopback; the raw-socket tests speak HTTP/1.1 by hand where a
client library would not send what they need (a lying Content-Length, a body cut off).
"""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from admin_http import contacts_view
from relay import contact_database
from tests.conftest import RunningRelay
from tests.test_admin_api_functional import (
    _NOTHING,
    TOKEN,
    Admin,
    AdminFactory,
    admin,
    relay_config,
)
from tests.two_nodes import store_url

__all__ = ["admin", "store_url"]  # fixtures
CONTACTS = "/api/v1/sites/shop/contacts"
CSV = {"Content-Type": "text/csv"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def relay(tmp_path: Path, start_relay: Any) -> RunningRelay:
    relay: RunningRelay = await start_relay(relay_config(tmp_path, closed_port()))
    return relay


async def csv_import(api: Admin, text: str | bytes, status: int = 200) -> Any:
    data = text.encode() if isinstance(text, str) else text
    reply = await api.call("POST", CONTACTS, headers=CSV, data=data)
    assert reply.status == status, reply.text
    return reply.body


async def emails(api: Admin, query: str = "") -> list[str]:
    found = await api.get(f"{CONTACTS}?page_size=500{query}")
    assert found["total"] == len(found["items"])
    return [c["email"] for c in found["items"]]


def rows(count: int, start: int = 0) -> Iterator[bytes]:
    """CSV lines of generated contacts, made as they are sent."""
    for n in range(start, start + count):
        yield f"user{n}@example.com,First{n},Last{n},Company {n},a;b{n % 10},plan{n % 3}\n".encode()


async def streamed(count: int, chunk_rows: int = 500) -> AsyncIterator[bytes]:
    yield b"email,first_name,last_name,company,tags,plan\n"
    lines: list[bytes] = []
    for line in rows(count):
        lines.append(line)
        if len(lines) == chunk_rows:
            yield b"".join(lines)
            lines = []
    yield b"".join(lines)


# -- one and many


async def test_one_contact_is_added_then_updated(relay: RunningRelay, admin: AdminFactory) -> None:
    api = admin(relay)
    body = {
        "email": "Ann@Example.COM",
        "first_name": "Ann",
        "tags": ["vip"],
        "attributes": {"n": 1},
    }
    added = await api.ok("POST", CONTACTS, body, status=201)
    assert (added["added"], added["updated"], added["rejected"]) == (1, 0, 0)
    contact = added["contact"]
    assert contact["email"] == "ann@example.com"
    assert (contact["first_name"], contact["last_name"], contact["tags"]) == ("Ann", "", ["vip"])
    assert (contact["email_count"], contact["last_email_sent"], contact["unsubscribed"]) == (
        0,
        None,
        False,
    )

    # A second POST adds tags and attributes and sets what it gives; the rest stays.
    again = {"email": "ann@example.com", "last_name": "Lee", "tags": ["news"], "attributes": {}}
    updated = await api.ok("POST", CONTACTS, {**again, "email_count": 99}, status=200)
    assert (updated["added"], updated["updated"]) == (0, 1)
    contact = await api.get(f"{CONTACTS}/ANN@example.com")
    assert (contact["first_name"], contact["last_name"]) == ("Ann", "Lee")
    assert contact["tags"] == ["vip", "news"] and contact["attributes"] == {"n": 1}
    assert contact["email_count"] == 0  # read-only: ignored in a POST

    bad = await api.call("POST", CONTACTS, {"email": "not an address", "tags": "vip"})
    error = bad.error(422, "invalid")
    assert "email: required, an email address" in error["problems"]
    assert "tags: must be a list of texts" in error["problems"]

    audit = await api.get("/api/v1/audit")
    assert [(a["action"], a["kind"], a["target"]) for a in audit["items"][:2]] == [
        ("update", "contact", "shop/ann@example.com"),
        ("create", "contact", "shop/ann@example.com"),
    ]


async def test_many_contacts_report_the_bad_ones_by_index(
    relay: RunningRelay, admin: AdminFactory
) -> None:
    api = admin(relay)
    await api.ok("POST", CONTACTS, {"email": "old@example.com"}, status=201)
    contacts = [
        {"email": "a@example.com", "company": "A Inc"},
        {"email": "old@example.com", "first_name": "Old"},
        {"first_name": "No Email"},
        {"email": "b@example.com", "tags": ["x" * 65]},
        "not an object",
        {"email": "a@example.com", "tags": ["again"]},  # the same email twice: an update
        {"email": "c@example.com", "attributes": {"nested": {"no": 1}}},
    ]
    answer = await api.ok("POST", CONTACTS, {"contacts": contacts})
    assert (answer["added"], answer["updated"], answer["rejected"]) == (1, 2, 4)
    assert [(p["index"], p["email"]) for p in answer["problems"]] == [
        (2, ""),
        (3, "b@example.com"),
        (4, ""),
        (6, "c@example.com"),
    ]
    assert "email: required" in answer["problems"][0]["problem"]
    assert "at most 64 characters" in answer["problems"][1]["problem"]
    assert "no lists or objects" in answer["problems"][3]["problem"]
    assert answer["more_problems"] == 0
    assert await emails(api) == ["old@example.com", "a@example.com"]
    a = await api.get(f"{CONTACTS}/a@example.com")
    assert (a["company"], a["tags"]) == ("A Inc", ["again"])

    wrong = await api.call("POST", CONTACTS, {"contacts": {"email": "a@example.com"}})
    wrong.error(400, "bad_request")


# -- CSV


async def test_csv_import_with_bom_quotes_and_bad_rows(
    relay: RunningRelay, admin: AdminFactory
) -> None:
    api = admin(relay)
    text = (
        "\ufeffEmail,First Name,last_name,Company,Tags,City,unsubscribed,email_count\r\n"
        'ann@example.com,Ann,Lee,"Lee, Sons & ""Co""",vip;news,Oslo,,7\r\n'  # row 2
        "bob@example.com,Bob,,,news|beta,,yes,\r\n"  # row 3
        ",No,Email,,,,,\r\n"  # row 4: no email
        '"not-an-address",X,,,,,,\r\n'  # row 5
        '"cy@example.com","Cy\nTwo lines",,,,,,\r\n'  # row 6: a line end in a name
        "\r\n"  # row 7: blank, skipped
        f"long@example.com,{'x' * 201},,,,,,\r\n"  # row 8
        "ctl@example.com,Bad\x01Name,,,,,,\r\n"  # row 9
        "ANN@example.com,Annie,,,extra,,,\r\n"  # row 10: again: an update
        'tagged@example.com,,,,"a,b",,,\r\n'  # row 11
        "wide@example.com,,,,,,,,,\r\n"  # row 12
        "last@example.com,Last"  # row 13: short, and no line end
    )
    answer = await csv_import(api, text.encode())
    assert (answer["added"], answer["updated"], answer["rejected"]) == (3, 1, 7)
    assert [(p["row"], p["email"], p["problem"]) for p in answer["problems"]] == [
        (4, "", "email: missing"),
        (5, "not-an-address", "email: not an email address"),
        (6, "cy@example.com", "first_name: no control characters"),
        (8, "long@example.com", "first_name: at most 200 characters"),
        (9, "ctl@example.com", "first_name: no control characters"),
        (11, "tagged@example.com", "tags: no ';', '|' or ',' in a tag"),
        (12, "wide@example.com", "10 cells, the header has 8"),
    ]
    assert await emails(api) == ["ann@example.com", "bob@example.com", "last@example.com"]
    ann = await api.get(f"{CONTACTS}/ann@example.com")
    assert (ann["first_name"], ann["last_name"]) == ("Annie", "Lee")
    assert ann["company"] == 'Lee, Sons & "Co"'
    assert ann["tags"] == ["vip", "news", "extra"]
    assert ann["attributes"] == {"City": "Oslo"}
    assert ann["email_count"] == 0  # a read-only column is ignored
    bob = await api.get(f"{CONTACTS}/bob@example.com")
    assert bob["unsubscribed"] is True and bob["unsubscribed_at"] is not None
    assert bob["tags"] == ["news", "beta"]
    last = await api.get(f"{CONTACTS}/last@example.com")
    assert (last["first_name"], last["tags"], last["attributes"]) == ("Last", [], {})

    # Importing again never re-subscribes anyone, and empty cells change nothing.
    again = await csv_import(api, "email,unsubscribed,first_name\nbob@example.com,no,\n")
    assert (again["added"], again["updated"], again["rejected"]) == (0, 1, 0)
    bob = await api.get(f"{CONTACTS}/bob@example.com")
    assert (bob["unsubscribed"], bob["first_name"]) == (True, "Bob")


async def test_csv_header_problems_import_nothing(relay: RunningRelay, admin: AdminFactory) -> None:
    api = admin(relay)
    for text, problem in [
        ("first_name,company\nAnn,A\n", "header: an 'email' column is required"),
        ("email,tags,Tags\n", "header: column 'tags' twice"),
        ("", "the CSV has no header row"),
        (b"email,\xff\n", "header: not UTF-8"),
    ]:
        reply = await api.call(
            "POST", CONTACTS, headers=CSV, data=text if isinstance(text, bytes) else text.encode()
        )
        assert problem in reply.error(422, "invalid")["problems"]
    assert await emails(api) == []


async def test_csv_bounds_a_huge_line_and_counts_problems_past_the_cap(
    relay: RunningRelay, admin: AdminFactory
) -> None:
    api = admin(relay)
    huge = "big@example.com," + "x" * 200_000 + "\n"
    unclosed = 'open@example.com,"never closed\n' + "more\n" * 20  # to the end of the body
    bad = "".join(f"bad{n}\n" for n in range(1500))
    text = "email,first_name\nok@example.com,A\n" + huge + "fine@example.com,B\n" + bad
    answer = await csv_import(api, text + unclosed)
    assert (answer["added"], answer["rejected"]) == (2, 1 + 1500 + 1)
    assert answer["problems"][0] == {
        "row": 3,
        "email": "",
        "problem": "longer than 65536 bytes (or a quote never closed)",
    }
    assert len(answer["problems"]) == 1000 and answer["more_problems"] == 502
    assert await emails(api) == ["ok@example.com", "fine@example.com"]


# -- reading, changing, deleting


async def test_list_filters_and_pages(relay: RunningRelay, admin: AdminFactory) -> None:
    api = admin(relay)
    text = "email,first_name,company,tags\n" + "".join(
        f"p{n}@example.com,Name{n},{('Other', 'Acme')[n % 2]},{('even', 'odd')[n % 2]};all\n"
        for n in range(12)
    )
    await csv_import(api, text)
    await api.ok("PATCH", f"{CONTACTS}/p3@example.com", {"unsubscribed": True})

    page = await api.get(f"{CONTACTS}?page=2&page_size=5")
    assert (page["total"], page["page"], page["page_size"]) == (12, 2, 5)
    assert [c["email"] for c in page["items"]] == [f"p{n}@example.com" for n in range(5, 10)]
    assert await emails(api, "&tag=even") == [f"p{n}@example.com" for n in range(0, 12, 2)]
    assert await emails(api, "&tag=nobody") == []
    assert await emails(api, "&q=ACME&tag=all&unsubscribed=false") == [
        f"p{n}@example.com" for n in (1, 5, 7, 9, 11)
    ]
    assert await emails(api, "&unsubscribed=true") == ["p3@example.com"]
    assert await emails(api, "&q=name1") == ["p1@example.com", "p10@example.com", "p11@example.com"]
    assert await emails(api, "&q=%25") == []  # a wildcard is a character
    wrong = await api.call("GET", f"{CONTACTS}?unsubscribed=maybe")
    wrong.error(400, "bad_request")


async def test_patch_and_delete(relay: RunningRelay, admin: AdminFactory) -> None:
    api = admin(relay)
    contact = {"email": "dan@example.com", "tags": ["a", "b"], "attributes": {"x": 1, "y": "z"}}
    await api.ok("POST", CONTACTS, contact, status=201)
    one = f"{CONTACTS}/Dan@Example.com"
    patched = await api.ok(
        "PATCH", one, {"first_name": " Dan ", "tags": ["c"], "attributes": {"y": None}}
    )
    assert (patched["first_name"], patched["tags"], patched["attributes"]) == (
        "Dan",
        ["c"],
        {"y": None},
    )
    assert await emails(api, "&tag=a") == [] and await emails(api, "&tag=c") == ["dan@example.com"]

    unsubscribed = await api.ok("PATCH", one, {"unsubscribed": True})
    assert unsubscribed["unsubscribed"] is True and unsubscribed["unsubscribed_at"]
    resubscribed = await api.ok("PATCH", one, {"unsubscribed": False, "email": "dan@example.com"})
    assert resubscribed["unsubscribed"] is False and resubscribed["unsubscribed_at"] is None

    refused = await api.call(
        "PATCH", one, {"email": "new@example.com", "email_count": 3, "colour": "red", "tags": "x"}
    )
    assert set(refused.error(422, "invalid")["problems"]) == {
        "email: cannot change; delete the contact and add the new one",
        "email_count: read-only (the relay keeps it)",
        "colour: unknown key",
        "tags: must be a list of texts",
    }
    (await api.call("PATCH", f"{CONTACTS}/nobody@example.com", {"first_name": "N"})).error(
        404, "not_found"
    )

    assert (await api.call("DELETE", one)).status == 204
    (await api.call("DELETE", one)).error(404, "not_found")
    (await api.call("GET", one)).error(404, "not_found")
    assert await emails(api, "&tag=c") == []
    audit = await api.get("/api/v1/audit")
    assert [(a["action"], a["target"]) for a in audit["items"][:2]] == [
        ("delete", "shop/dan@example.com"),
        ("update", "shop/dan@example.com"),
    ]


async def test_unknown_site_and_no_token(relay: RunningRelay, admin: AdminFactory) -> None:
    api = admin(relay)
    other = "/api/v1/sites/nosuch/contacts"
    for method, path, body in [
        ("GET", other, None),
        ("POST", other, {"email": "a@example.com"}),
        ("GET", f"{other}/a@example.com", None),
        ("PATCH", f"{other}/a@example.com", {"first_name": "A"}),
        ("DELETE", f"{other}/a@example.com", None),
    ]:
        reply = await api.call(method, path, body if body is not None else _NOTHING)
        reply.error(404, "not_found")
    csv_reply = await api.call("POST", other, headers=CSV, data=b"email\na@example.com\n")
    csv_reply.error(404, "not_found")
    anonymous = admin(relay, token=None)
    for method in ("GET", "POST"):
        (await anonymous.call(method, CONTACTS)).error(401, "unauthorized")
    (await anonymous.call("GET", f"{CONTACTS}/a@example.com")).error(401, "unauthorized")


async def test_deleting_a_site_deletes_its_contacts(
    relay: RunningRelay, admin: AdminFactory
) -> None:
    api = admin(relay)
    site = {"id": "blog", "from": {"email": "news@blog.example.com"}, "upstreams": ["file-up"]}
    await api.ok("POST", "/api/v1/sites", site, status=201)
    path = "/api/v1/sites/blog/contacts"
    await api.ok("POST", path, {"contacts": [{"email": "r@example.com", "tags": ["t"]}]})
    assert (await api.call("DELETE", "/api/v1/sites/blog")).status == 204
    await api.ok("POST", "/api/v1/sites", site, status=201)
    assert (await api.get(path))["total"] == 0
    assert (await api.get(f"{path}?tag=t"))["total"] == 0


# -- big bodies


async def raw_request(port: int, head: str, body: list[bytes], close: bool = False) -> bytes:
    """Send a request by hand; its answer (or b"" when ``close`` hangs up without reading)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode())
    for part in body:
        writer.write(part)
        await writer.drain()
    if close:
        writer.close()
        await writer.wait_closed()
        return b""
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


def head(port: int, length: str) -> str:
    return (
        f"POST {CONTACTS} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\n{length}"
        "Connection: close\r\n\r\n"
    )


async def test_oversized_csv_is_413(
    relay: RunningRelay, admin: AdminFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bodies are sent whole: the server answers at once and reads the rest away (aiohttp's
    lingering close), so that the client sees the answer."""
    api, port = admin(relay), relay.app.admin_port
    monkeypatch.setattr(contacts_view, "MAX_CSV_BYTES", 200_000)
    body = [chunk async for chunk in streamed(4_000)]  # 260 kB
    declared = f"Content-Length: {sum(map(len, body))}\r\n"
    answer = await raw_request(port, head(port, declared), body)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"too_large"' in answer
    assert await emails(api) == []

    # A chunked body says nothing of its length: it is cut off when it passes the limit.
    chunked = [b"%x\r\n%s\r\n" % (len(c), c) for c in body if c] + [b"0\r\n\r\n"]
    answer = await raw_request(port, head(port, "Transfer-Encoding: chunked\r\n"), chunked)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"the rest was not read" in answer
    found = await api.get(CONTACTS)
    assert 0 < found["total"] < 4_000 and found["total"] % 500 == 0  # whole batches only


async def test_a_client_that_goes_away_keeps_the_committed_batches(
    relay: RunningRelay, admin: AdminFactory
) -> None:
    api, port = admin(relay), relay.app.admin_port
    data = b"email\n" + b"".join(f"gone{n}@example.com\n".encode() for n in range(1200))
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head(port, "Transfer-Encoding: chunked\r\n").encode())
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))  # one chunk, and never the last (0)
    await writer.drain()

    async def poll(check: Any, what: str) -> Any:
        for _ in range(400):
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {what}")

    async def two_batches() -> bool:
        return bool((await api.get(CONTACTS))["total"] == 1000)

    async def broken_off() -> Any:
        audit = await api.get("/api/v1/audit")
        return next((a for a in audit["items"] if a["action"] == "import"), None)

    await poll(two_batches, "two batches committed")
    writer.close()  # the 200 rows read since wait for a batch that never fills
    await writer.wait_closed()
    entry = await poll(broken_off, "import in the audit log")
    assert entry["detail"] == {
        "source": "CSV",
        "added": 1000,
        "updated": 0,
        "rejected": 0,
        "complete": False,
    }
    assert (await api.get(CONTACTS))["total"] == 1000


async def test_a_20000_row_import_in_bounded_memory(
    relay: RunningRelay, admin: AdminFactory
) -> None:
    """The CSV (1.6 MB) is made as it is sent; the relay's share of the peak stays far
    below what holding its rows would take (about 20 MB as Python objects)."""
    api = admin(relay)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        reply = await api.call("POST", CONTACTS, headers=CSV, data=streamed(20_000))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert reply.status == 200, reply.text
    answer = reply.body
    assert (answer["added"], answer["updated"], answer["rejected"]) == (20_000, 0, 0)
    print(f"peak {peak}")
    assert peak < 8 * 1024 * 1024, peak
    found = await api.get(f"{CONTACTS}?tag=b7&page_size=1")
    assert found["total"] == 2000
    assert found["items"][0]["attributes"] == {"plan": "plan1"}


# -- SQLite and PostgreSQL


@pytest.fixture
async def any_store(tmp_path: Path, store_url: str, start_relay: Any) -> RunningRelay:
    config = relay_config(tmp_path, closed_port())
    config["store"] = {"url": store_url}
    relay: RunningRelay = await start_relay(config)
    return relay


async def test_the_upsert_on_sqlite_and_postgresql(
    any_store: RunningRelay, admin: AdminFactory
) -> None:
    api = admin(any_store)
    await api.ok("POST", CONTACTS, {"email": "u0@example.com", "unsubscribed": True}, status=201)
    # 1,200 rows in three batches; u0..u199 come twice (the second time in a later batch).
    lines = [f"u{n}@example.com,N{n},{'t' if n % 2 else 's'}\n" for n in range(1000)]
    lines += [f"u{n}@example.com,M{n},again\n" for n in range(200)]
    answer = await csv_import(api, "email,first_name,tags\n" + "".join(lines))
    assert (answer["added"], answer["updated"], answer["rejected"]) == (999, 201, 0)
    u0 = await api.get(f"{CONTACTS}/u0@example.com")
    assert (u0["first_name"], u0["tags"], u0["unsubscribed"]) == ("M0", ["s", "again"], True)
    assert (await api.get(f"{CONTACTS}?tag=again&page_size=1"))["total"] == 200
    assert (await api.get(f"{CONTACTS}?tag=t&page_size=1"))["total"] == 500
    assert (await api.get(f"{CONTACTS}?unsubscribed=true"))["total"] == 1

    await api.ok("PATCH", f"{CONTACTS}/u201@example.com", {"tags": ["again"]})
    assert (await api.get(f"{CONTACTS}?tag=again&page_size=1"))["total"] == 201
    assert (await api.get(f"{CONTACTS}?tag=t&page_size=1"))["total"] == 499

    # What a campaign reads: the audience in id order, a page at a time.
    async with any_store.app.writer.engine.connect() as connection:
        first = await contact_database.contacts_after(connection, "shop", 0, ["again", "x"], 150)
        rest = await contact_database.contacts_after(
            connection, "shop", first[-1].id, ["again"], 150
        )
        everyone = await contact_database.contacts_after(connection, "shop", 0, None, 5000)
    emails_in_order = [c.email for c in first + rest]
    assert emails_in_order == [f"u{n}@example.com" for n in (*range(200), 201)]
    assert len(everyone) == 1000 and [c.id for c in everyone] == sorted(c.id for c in everyone)
    assert first[0].unsubscribed and first[0].tags == ["s", "again"]
