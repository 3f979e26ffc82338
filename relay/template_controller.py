"""Templates made through the admin API, and the one way a template is rendered: `render_off_loop`.

Saving: the parts are checked by `check_template` (name, size, syntax with part
and line, names starting with ``__``) before anything is written, in the
render pool (compiling a part of 100,000 characters takes up to a second): a
problem is a 422 listing them all. A name the config file has is the file's (409: change
it there and reload); a template still named by a site's ``form.template``
cannot be deleted (409 naming the sites). Every change is written with its
audit entry (the parts' lengths, not their text) and a bump of the ``catalog``
version in one transaction, so this node uses it at once and every other node
within ``cluster.sync_seconds``.

Rendering (`render_off_loop`, for the preview, the dashboard's live preview of parts
not saved yet (`preview_draft`, checked as a save is first), the forms and the send API):
Jinja2 is CPU in the calling thread, so a render never runs on the event loop.
It runs in a small pool of its own (RENDER_THREADS threads: a flood of slow
renders queues there and never takes the threads that AUTH's password hashing
and DNS use), with a `Deadline` of RENDER_SECONDS counted from the call (time
queued included): every loop step, call, filter and output chunk checks it and
the render stops itself with the problem "template took too long" (see
relay/core/templates.py for the one operation that may run past it). The
caller also stops waiting RENDER_GRACE_SECONDS later, whatever the thread does.
While a render runs, the event loop shares the interpreter with it (the GIL
switches every 5 ms): /healthz and SMTP keep answering, more slowly.

Cost, measured on the 2-core development machine (other tests running beside,
best of 5 x 2000): a one-line template renders in 9 µs, a small one (a
subject, and a text and an html part each looping over a three-field form)
in 41-47 µs; the deadline's checks add 1 and 5 µs to them, about 50 ns to
each loop step (an empty ``range(100000)`` loop: 10 ms instead of 5).
`render_off_loop` adds the hand-over to a thread and back: 60-80 µs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from relay import catalog_database, template_database
from relay.catalog_controller import Conflict, Invalid, NotFound
from relay.cluster_controller import CATALOG, ClusterSync
from relay.config import Config
from relay.core.compose import Rendered
from relay.core.directory import Directory
from relay.core.templates import Deadline, Template, check_template, render
from relay.store import GroupWriter
from relay.template_database import StoredTemplate

log = logging.getLogger(__name__)
RENDER_SECONDS = 2.0
RENDER_GRACE_SECONDS = 1.0
RENDER_THREADS = 2  # renders are CPU under the GIL: more threads add no speed, only contention
PARTS = ("subject", "text", "html")
DRAFT = "draft"  # the name a template being edited is checked under (a valid one)
_RENDERERS = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="template-render")


async def render_off_loop(
    template: Template,
    variables: Mapping[str, object],
    *,
    seconds: float = RENDER_SECONDS,
    max_output_chars: int = 1_000_000,
) -> Rendered | list[str]:
    """``render`` in the render pool within ``seconds``; never raises (a problem says why)."""
    deadline = Deadline.after(seconds, time.monotonic)
    job = asyncio.get_running_loop().run_in_executor(
        _RENDERERS, _render, template, variables, max_output_chars, deadline
    )
    try:
        return await asyncio.wait_for(job, seconds + RENDER_GRACE_SECONDS)
    except TimeoutError:  # the thread stops at its next check of the deadline
        log.warning("template %s: render still running after %g s", template.name, seconds)
        return [f"template took too long (over {seconds:g} s)"]


def _render(
    template: Template, variables: Mapping[str, object], limit: int, deadline: Deadline
) -> Rendered | list[str]:
    return render(template, variables, max_output_chars=limit, deadline=deadline)


@dataclass(frozen=True)
class TemplateInfo:
    template: Template
    source: str  # "file" or "api"
    updated_at: float | None  # None for the file's


class TemplateController:
    def __init__(
        self,
        writer: GroupWriter,
        config: Callable[[], Config],
        directory: Callable[[], Directory],
        sync: ClusterSync,
        clock: Callable[[], float],
    ) -> None:
        self._writer = writer
        self._config = config
        self._directory = directory
        self._sync = sync
        self._clock = clock

    async def listing(self) -> list[TemplateInfo]:
        """The live templates: the file's, then the store's (the file wins a name)."""
        async with self._writer.engine.connect() as connection:
            updated = await template_database.updated_times(connection)
        return [self._info(t, updated.get(t.name)) for t in self._directory().templates]

    async def get(self, name: str) -> TemplateInfo:
        template = self._live(name)
        async with self._writer.engine.connect() as connection:
            stored = await template_database.find_template(connection, name)
        return self._info(template, stored.updated_at if stored else None)

    async def create(self, actor: str, body: Mapping[str, Any]) -> TemplateInfo:
        name = body.get("name")
        if not isinstance(name, str):
            raise Invalid(["template.name: required, a string"])
        self._refuse_file_template(name)
        template = await _checked(_parse(name, body, base=None))
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            if await template_database.find_template(c, name) is not None:
                raise Conflict(f"template {name!r} exists; change it with PUT or PATCH")
            await template_database.put_template(c, StoredTemplate(template, now, now))
            await self._audit(c, actor, "create", template)

        await self._write(write)
        return await self.get(name)

    async def update(
        self, actor: str, name: str, body: Mapping[str, Any], *, merge: bool
    ) -> TemplateInfo:
        """PUT (``merge`` false: parts not given are removed) or PATCH (JSON merge patch)."""
        self._refuse_file_template(name)
        if body.get("name", name) != name:
            raise Invalid(["template.name: a template cannot be renamed; create a new one"])
        async with self._writer.engine.connect() as connection:
            old = await template_database.find_template(connection, name)
        if old is None:
            raise NotFound(f"no template {name!r}")
        template = await _checked(_parse(name, body, base=old.template if merge else None))

        async def write(c: AsyncConnection) -> None:
            now = await template_database.find_template(c, name)
            if now is None:
                raise NotFound(f"no template {name!r}")
            if merge and now.updated_at != old.updated_at:  # what was checked kept old parts
                raise Conflict(f"template {name!r} changed meanwhile; send the change again")
            changed = StoredTemplate(template, old.created_at, max(self._clock(), old.updated_at))
            await template_database.put_template(c, changed)
            await self._audit(c, actor, "update", template)

        await self._write(write)
        return await self.get(name)

    async def delete(self, actor: str, name: str) -> None:
        self._refuse_file_template(name)
        users = [
            s.id for s in self._directory().sites if s.form is not None and s.form.template == name
        ]
        if users:
            raise Conflict(
                f"template {name!r} is the form template of site(s) {', '.join(users)}; "
                "change their form.template first"
            )

        async def write(c: AsyncConnection) -> None:
            if not await template_database.delete_template(c, name):
                raise NotFound(f"no template {name!r}")
            await self._audit(c, actor, "delete", Template(name))

        await self._write(write)

    async def preview(self, name: str, variables: Mapping[str, object]) -> Rendered:
        """What a message with these variables would get; ``Invalid`` with the render's problems."""
        result = await render_off_loop(self._live(name), variables)
        if isinstance(result, list):
            raise Invalid(result)
        return result

    async def preview_draft(
        self, parts: Mapping[str, object], variables: Mapping[str, object]
    ) -> Rendered:
        """What parts as typed, not saved, would render: checked as a save checks them (size,
        syntax), then rendered as ``preview`` renders; ``Invalid`` with every problem."""
        template = await _checked(_parse(DRAFT, parts, base=None))
        result = await render_off_loop(template, variables)
        if isinstance(result, list):
            raise Invalid(result)
        return result

    def _live(self, name: str) -> Template:
        template = self._directory().template(name)
        if template is None:
            raise NotFound(f"no template {name!r}")
        return template

    def _info(self, template: Template, updated_at: float | None) -> TemplateInfo:
        if any(t.name == template.name for t in self._config().templates):
            return TemplateInfo(template, "file", None)
        return TemplateInfo(template, "api", updated_at)

    def _refuse_file_template(self, name: str) -> None:
        if any(t.name == name for t in self._config().templates):
            raise Conflict(
                f"template {name!r} is managed by {self._config().path}; change it there and reload"
            )

    async def _audit(self, c: AsyncConnection, actor: str, action: str, t: Template) -> None:
        # The parts' lengths, not their text: the audit log says what changed, not a copy of it.
        detail = {part: len(getattr(t, part)) for part in PARTS if getattr(t, part) is not None}
        entry = catalog_database.AuditEntry(
            self._clock(), actor, action, "template", t.name, detail
        )
        await catalog_database.add_audit(c, entry)

    async def _write(self, job: Callable[[AsyncConnection], Awaitable[None]]) -> None:
        await self._sync.change(CATALOG, job)


def _parse(name: str, body: Mapping[str, Any], base: Template | None) -> Template:
    """The template a request body describes; merged into ``base`` (PATCH) when given."""
    problems = [
        f"template.{key}: unknown key (name, {', '.join(PARTS)})"
        for key in body
        if key not in ("name", *PARTS)
    ]
    parts: dict[str, str | None] = {p: getattr(base, p) if base else None for p in PARTS}
    for part in PARTS:
        if part not in body:
            continue
        value = body[part]
        if value is not None and not isinstance(value, str):
            problems.append(f"template.{part}: must be a string or null")
        else:
            parts[part] = value
    if problems:
        raise Invalid(problems)
    return Template(name, **parts)


async def _checked(template: Template) -> Template:
    """``template`` when it may be saved; compiled in a thread (a large one takes milliseconds)."""
    problems = await asyncio.get_running_loop().run_in_executor(
        _RENDERERS, check_template, template
    )
    if problems:
        raise Invalid(problems)
    return template
