"""/api/v1/templates against a relay running in-process: CRUD, save-time checks, the sandbox,
escaping, the preview, the render deadline, and a change reaching another node.

Every call is real HTTP on loopback (aiohttp client -> the relay's admin port), on a real
SQLite store (and PostgreSQL for the two-node test, when there is one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.app import RelayApp
from relay.cluster_controller import CATALOG
from relay.core.compose import Rendered
from relay.core.templates import Template, render
from relay.template_controller import RENDER_GRACE_SECONDS, RENDER_SECONDS
from tests.conftest import base_config, smtp_upstream, write_config
from tests.test_admin_api_functional import (
    TOKEN,
    V1,
    Admin,
    api_site,
    query_db,
    relay_config,
)
from tests.two_nodes import start_node, store_url

__all__ = ["start_node", "store_url"]  # fixtures
T = f"{V1}/templates"
FILE_TEMPLATE = {"name": "welcome", "subject": "Hi {{ name }}", "text": "Hello {{ name }}"}
HOSTILE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# The answer's bound: the deadline, the caller's grace, and room for a loaded machine.
ANSWER_BOUND = RENDER_SECONDS + RENDER_GRACE_SECONDS + 1.0


def config_with_templates(tmp_path: Path, port: int) -> dict[str, Any]:
    config = relay_config(tmp_path, port)
    config["templates"] = [FILE_TEMPLATE]
    return config


@dataclass
class Env:
    api: Admin
    app: RelayApp
    config: dict[str, Any]


@pytest.fixture
async def env(tmp_path: Path, start_relay, closed_port: int) -> AsyncIterator[Env]:
    """A relay with the file template "welcome" and an admin client."""
    config = config_with_templates(tmp_path, closed_port)
    relay = await start_relay(config)
    async with aiohttp.ClientSession() as session:
        yield Env(Admin(session, relay.app.admin_port), relay.app, config)


async def test_create_list_get_replace_patch_and_delete(env: Env) -> None:
    api = env.api
    listed = await api.get(T)
    assert listed["items"] == [{"name": "welcome", "managed_by": "file", "updated_at": None}]

    body = {"name": "order", "subject": "Order {{ n }}", "text": "Thanks, {{ name }}"}
    created = await api.ok("POST", T, body, status=201)
    assert created["managed_by"] == "api" and created["updated_at"].endswith("Z")
    assert (created["subject"], created["text"], created["html"]) == (
        "Order {{ n }}",
        "Thanks, {{ name }}",
        None,
    )
    assert await api.get(f"{T}/order") == created
    names = [(i["name"], i["managed_by"]) for i in (await api.get(T))["items"]]
    assert names == [("welcome", "file"), ("order", "api")]
    # The live directory uses it at once, and the store has it.
    assert env.app.directory().template("order") == Template(
        "order", "Order {{ n }}", "Thanks, {{ name }}", None
    )
    assert query_db(env.config, "SELECT name, text FROM templates") == [
        ("order", "Thanks, {{ name }}")
    ]

    # PUT replaces every part: the subject not given is gone.
    replaced = await api.ok("PUT", f"{T}/order", {"text": "Text {{ n }}", "html": "<p>{{ n }}</p>"})
    assert (replaced["subject"], replaced["text"], replaced["html"]) == (
        None,
        "Text {{ n }}",
        "<p>{{ n }}</p>",
    )
    # PATCH merges: null removes a part, the others stay.
    patched = await api.ok("PATCH", f"{T}/order", {"subject": "New {{ n }}", "html": None})
    assert (patched["subject"], patched["text"], patched["html"]) == (
        "New {{ n }}",
        "Text {{ n }}",
        None,
    )
    (await api.call("PATCH", f"{T}/order", {"text": None})).error(422, "invalid")  # no text/html
    (await api.call("PATCH", f"{T}/order", {"name": "other"})).error(422, "invalid")
    (await api.call("PATCH", f"{T}/order", {"text": 5, "color": "red"})).error(422, "invalid")
    (await api.call("POST", T, body)).error(409, "conflict")  # exists: change it with PUT
    (await api.call("PUT", f"{T}/missing", {"text": "x"})).error(404, "not_found")

    # The file's template is the file's.
    for method, path, sent in [
        ("POST", T, {**FILE_TEMPLATE, "text": "x"}),
        ("PUT", f"{T}/welcome", {"text": "x"}),
        ("PATCH", f"{T}/welcome", {"text": "x"}),
        ("DELETE", f"{T}/welcome", None),
    ]:
        error = (await api.call(method, path, *([sent] if sent else []))).error(409, "conflict")
        assert "managed by" in error["message"] and "config.yaml" in error["message"]

    # A site's form names it: deleting is refused, naming the site; a form cannot name a
    # template that does not exist.
    form = {"to": ["sales@example.com"], "template": "order"}
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["file-up"], form=form), status=201)
    error = (await api.call("DELETE", f"{T}/order")).error(409, "conflict")
    assert "blog" in error["message"]
    missing = {"to": ["sales@example.com"], "template": "nope"}
    refused = await api.call("POST", f"{V1}/sites", api_site("news", ["file-up"], form=missing))
    assert refused.error(422, "invalid")["problems"] == [
        "site.form.template: no template named 'nope'"
    ]
    await api.ok("DELETE", f"{V1}/sites/blog", status=204)

    await api.ok("DELETE", f"{T}/order", status=204)
    (await api.call("GET", f"{T}/order")).error(404, "not_found")
    (await api.call("DELETE", f"{T}/order")).error(404, "not_found")
    assert env.app.directory().template("order") is None

    audit = [
        (e["action"], e["target"], e["detail"])
        for e in (await api.get(f"{V1}/audit"))["items"]
        if e["kind"] == "template"
    ]
    assert audit == [
        ("delete", "order", {}),
        ("update", "order", {"subject": 11, "text": 12}),
        ("update", "order", {"text": 12, "html": 14}),
        ("create", "order", {"subject": 13, "text": 18}),
    ]


async def test_the_file_wins_a_name_after_a_reload(env: Env, tmp_path: Path) -> None:
    api = env.api
    await api.ok("POST", T, {"name": "promo", "text": "from the API"}, status=201)
    env.config["templates"] = [FILE_TEMPLATE, {"name": "promo", "text": "from the file"}]
    write_config(tmp_path, env.config)
    await api.ok("POST", f"{V1}/reload")

    shown = await api.get(f"{T}/promo")
    assert (shown["managed_by"], shown["text"]) == ("file", "from the file")
    (await api.call("PATCH", f"{T}/promo", {"text": "x"})).error(409, "conflict")
    # Another change through the API reloads the store's objects: the file still wins.
    await api.ok("POST", T, {"name": "other", "text": "x"}, status=201)
    assert (await api.get(f"{T}/promo"))["text"] == "from the file"
    names = [(i["name"], i["managed_by"]) for i in (await api.get(T))["items"]]
    assert names == [("welcome", "file"), ("promo", "file"), ("other", "api")]


async def test_a_syntax_error_is_422_at_save_time_naming_part_and_line(env: Env) -> None:
    api = env.api
    before = await env.app.sync._read()
    body = {"name": "broken", "subject": "{% if %}", "text": "fine", "html": "<p>\n{{ x }\n</p>"}
    error = (await api.call("POST", T, body)).error(422, "invalid")
    assert error["problems"] == [
        "subject: line 1: Expected an expression, got 'end of statement block'",
        "html: line 2: unexpected '}'",
    ]
    bad_name = (await api.call("POST", T, {"name": "Bad Name", "text": "x"})).error(422, "invalid")
    assert bad_name["problems"][0].startswith("name: ")
    (await api.call("GET", f"{T}/broken")).error(404, "not_found")
    assert await env.app.sync._read() == before

    await api.ok("POST", T, {"name": "fixed", "text": "{{ x }}"}, status=201)
    patch = await api.call("PATCH", f"{T}/fixed", {"html": "{% for %}"})
    assert patch.error(422, "invalid")["problems"] == [
        "html: line 1: Expected an expression, got 'end of statement block'"
    ]
    assert (await api.get(f"{T}/fixed"))["html"] is None  # nothing changed


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
        "{{ joiner['__init__']['__globals__'] }}",
        "{{ cycler|attr('__init__') }}",
    ],
)
async def test_sandbox_escapes_are_refused_at_save_time(
    env: Env, tmp_path: Path, source: str
) -> None:
    api = env.api
    error = (await api.call("POST", T, {"name": "escape", "text": source})).error(422, "invalid")
    [problem] = error["problems"]
    assert (
        problem.startswith("text: line 1: '__") and "names starting with __ are refused" in problem
    )
    (await api.call("GET", f"{T}/escape")).error(404, "not_found")


@pytest.mark.parametrize(
    "source",
    [
        # Names built at render time: saved (no constant to see), refused by the sandbox.
        "{{ (cycler|attr('_' ~ '_init__')|attr('_' ~ '_globals__')).os.system('touch MARKER') }}",
        "{{ ''[('_' ~ '_class__')][('_' ~ '_mro__')] }}",
        "{{ cycler.reset.__self__ }}x",  # refused at save: shows the two layers agree
        "{{ config }}{{ request }}",
        "{{ items.append(1) }}",
    ],
)
async def test_sandbox_escapes_never_run_at_preview(env: Env, tmp_path: Path, source: str) -> None:
    api = env.api
    marker = tmp_path / "MARKER"
    created = await api.call(
        "POST", T, {"name": "escape", "text": source.replace("MARKER", str(marker))}
    )
    if created.status == 422:
        assert "names starting with __" in created.body["error"]["problems"][0]
        return
    assert created.status == 201, created.text
    preview = await api.call("POST", f"{T}/escape/preview", {"variables": {"items": []}})
    [problem] = preview.error(422, "invalid")["problems"]
    assert problem.startswith("text: line 1: ")
    assert not marker.exists()


async def test_html_variables_are_escaped_in_html_not_in_text_and_preview_equals_render(
    env: Env,
) -> None:
    api = env.api
    parts = {
        "subject": "Inquiry from {{ formData.name }}",
        "text": "{{ formData.name }} wrote:\n{{ formData.message }}\n",
        "html": "<p><b>{{ formData.name }}</b> wrote:</p><p>{{ formData.message }}</p>",
    }
    await api.ok("POST", T, {"name": "inquiry", **parts}, status=201)
    variables = {
        "formData": {"name": "<script>alert(1)</script>", "message": 'Tom & Jerry\'s "deal"'}
    }
    preview = await api.ok("POST", f"{T}/inquiry/preview", {"variables": variables})
    assert preview == {
        "subject": "Inquiry from <script>alert(1)</script>",
        "text": '<script>alert(1)</script> wrote:\nTom & Jerry\'s "deal"\n',
        "html": "<p><b>&lt;script&gt;alert(1)&lt;/script&gt;</b> wrote:</p>"
        "<p>Tom &amp; Jerry&#39;s &#34;deal&#34;</p>",
    }
    assert render(Template("inquiry", **parts), variables) == Rendered(**preview)

    # The file's template previews too; a missing variable is a problem, not "Hello ".
    assert await api.ok("POST", f"{T}/welcome/preview", {"variables": {"name": "Ada"}}) == {
        "subject": "Hi Ada",
        "text": "Hello Ada",
        "html": None,
    }
    missing = await api.call("POST", f"{T}/welcome/preview", {})
    assert all("'name' is undefined" in p for p in missing.error(422, "invalid")["problems"])
    (await api.call("POST", f"{T}/nope/preview", {})).error(404, "not_found")
    (await api.call("POST", f"{T}/welcome/preview", {"variables": []})).error(400, "bad_request")


async def test_a_hostile_template_answers_within_the_bound_and_the_relay_keeps_answering(
    env: Env,
) -> None:
    api = env.api
    """10**10 silent loop steps: the render stops itself at the deadline, /healthz answers."""
    await api.ok("POST", T, {"name": "hostile", "text": HOSTILE}, status=201)  # never evaluated
    await api.ok("POST", T, {"name": "small", "text": "hi {{ n }}"}, status=201)

    async def preview() -> tuple[float, Any]:
        started = time.monotonic()
        reply = await api.call("POST", f"{T}/hostile/preview", {})
        return time.monotonic() - started, reply

    # More hostile renders at once than the render pool has threads.
    previews = [asyncio.create_task(preview()) for _ in range(3)]
    health_waits = []
    while not all(p.done() for p in previews):
        started = time.monotonic()
        health = await api.call("GET", "/healthz", token=None)
        health_waits.append(time.monotonic() - started)
        assert health.status == 200
        await asyncio.sleep(0.05)
    for seconds, reply in [p.result() for p in previews]:
        [problem] = reply.error(422, "invalid")["problems"]
        assert "template took too long" in problem, problem
        assert seconds < ANSWER_BOUND, seconds
    assert len(health_waits) >= 10 and max(health_waits) < 1.0, health_waits
    print(
        f"hostile previews answered in {max(p.result()[0] for p in previews):.2f} s; /healthz "
        f"answered {len(health_waits)} times meanwhile, slowest {max(health_waits) * 1000:.0f} ms"
    )

    # The render threads really stopped: a small render finds one free at once.
    started = time.monotonic()
    small = await api.ok("POST", f"{T}/small/preview", {"variables": {"n": 1}})
    assert small["text"] == "hi 1"
    assert time.monotonic() - started < 1.0


# -- Two nodes

SYNC_SECONDS = 0.5
BOUND_SECONDS = 5.0


async def until(check: Any) -> float:
    started = time.monotonic()
    async with asyncio.timeout(BOUND_SECONDS):
        while True:
            if check():
                break
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_change_made_on_node_a_is_used_on_node_b(
    tmp_path: Path, start_node, store_url: str, closed_port: int
) -> None:
    config = base_config(tmp_path, [smtp_upstream("sink", closed_port)])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["health"] = {"check_interval_seconds": 0}
    config["cluster"] = {"sync_seconds": SYNC_SECONDS}
    a, b = await start_node("a", config), await start_node("b", config)
    async with aiohttp.ClientSession() as session:
        on_a, on_b = Admin(session, a.admin_port), Admin(session, b.admin_port)

        await on_a.ok("POST", T, {"name": "note", "text": "v1 {{ n }}"}, status=201)
        waited = await until(lambda: b.directory().template("note") is not None)
        assert (await on_b.ok("POST", f"{T}/note/preview", {"variables": {"n": 1}}))["text"] == (
            "v1 1"
        )

        await on_a.ok("PATCH", f"{T}/note", {"text": "v2 {{ n }}"})
        await until(lambda: (b.directory().template("note") or Template("")).text == "v2 {{ n }}")
        assert (await on_b.ok("POST", f"{T}/note/preview", {"variables": {"n": 2}}))["text"] == (
            "v2 2"
        )
        assert (await on_b.get(f"{T}/note"))["managed_by"] == "api"

        await on_a.ok("DELETE", f"{T}/note", status=204)
        await until(lambda: b.directory().template("note") is None)
        (await on_b.call("POST", f"{T}/note/preview", {})).error(404, "not_found")
        assert await a.sync.poll() == []  # A applied its own changes as it made them
        assert (await a.sync._read())[CATALOG] >= 3
    print(f"B had the new template after {waited:.2f} s (sync_seconds {SYNC_SECONDS})")
