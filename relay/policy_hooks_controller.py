"""The operator's policy module at work: loaded, reloaded, its hooks called under a timeout.

``policy.module`` names an importable module or a ``.py`` file. It is loaded
into a fresh module object at start and at every reload (SIGHUP, POST
/api/v1/reload), from its source (no stale bytecode); a module that fails to
load refuses the reload and the hooks in force stay. Calls in progress finish
with the hooks they started with; the next call takes the new ones, so open
SMTP sessions carry on.

An ``async def`` hook is awaited under ``asyncio.timeout``; a plain ``def``
runs in this module's own thread pool, so a slow one times out too and can
never starve the threads the relay signs and hashes in (a stuck one keeps its
thread: Python cannot stop it). A hook that raises, answers something the
core refuses (``core.policy_hooks``) or runs past ``policy.timeout_seconds``
has failed: logged with its name and the error, counted, and answered 451 --
or for ``on_route``, the relay's own route is kept (delivery must not stall
on a policy bug) and the attempt's route text says so.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import inspect
import logging
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import CodeType, ModuleType
from typing import Any

from relay.config_policy import PolicyConfig
from relay.core.headers import HeaderField
from relay.core.policy import Accept, Reject, TempFail, Verdict
from relay.core.policy_hooks import (
    HOOKS,
    LOCAL_POLICY_FAILED,
    ConnectFacts,
    DataFacts,
    HookError,
    MailFacts,
    RcptFacts,
    RecentBounces,
    apply_choice,
    check_data_answer,
    check_verdict,
    route_facts,
    route_kept,
)
from relay.core.routing import Route
from relay.metrics import Metrics

log = logging.getLogger(__name__)
SYNC_HOOK_THREADS = 8
_FAILED = object()  # a hook call that raised or timed out (logged and counted already)


class PolicyLoadError(Exception):
    """The policy module cannot be used: one line saying why."""


@dataclass(frozen=True)
class LoadedPolicy:
    module: str  # as policy.module gives it
    timeout_seconds: float
    hooks: dict[str, Callable[[Any], Any]]
    is_async: dict[str, bool] = field(default_factory=dict)


class PolicyHooks:
    """The hooks in force. ``on_*`` attributes are None when the module has no such hook
    (or no module is configured): the one check a message pays without a policy."""

    def __init__(self, metrics: Metrics, class_header: str, clock: Callable[[], float] = time.time):
        self._metrics = metrics
        self._class_header = class_header
        self._clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._loaded: LoadedPolicy | None = None
        self._traced: set[str] = set()  # hooks whose failure was logged with its traceback
        self.bounces = RecentBounces()
        self.on_connect: Callable[[Any], Any] | None = None
        self.on_mail: Callable[[Any], Any] | None = None
        self.on_rcpt: Callable[[Any], Any] | None = None
        self.on_data: Callable[[Any], Any] | None = None
        self.on_route: Callable[[Any], Any] | None = None

    def use(self, loaded: LoadedPolicy | None) -> None:
        """Put ``loaded`` in force (None: no policy)."""
        self._loaded = loaded
        self._traced.clear()
        hooks = loaded.hooks if loaded else {}
        self.on_connect = hooks.get("on_connect")
        self.on_mail = hooks.get("on_mail")
        self.on_rcpt = hooks.get("on_rcpt")
        self.on_data = hooks.get("on_data")
        self.on_route = hooks.get("on_route")
        if loaded is not None:
            log.info("policy %s: hooks %s", loaded.module, ", ".join(hooks) or "none")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- The hook points.

    async def check_connect(self, facts: ConnectFacts) -> Verdict:
        return await self._gate("on_connect", facts, f"client {facts.client_ip}")

    async def check_mail(self, facts: MailFacts) -> Verdict:
        return await self._gate("on_mail", facts, f"site {facts.site_id} client {facts.client_ip}")

    async def check_rcpt(self, facts: RcptFacts) -> Verdict:
        return await self._gate("on_rcpt", facts, f"site {facts.site_id} client {facts.client_ip}")

    async def check_data(self, facts: DataFacts) -> Verdict | tuple[HeaderField, ...]:
        """A verdict, or the fields ``on_data`` adds (the message is accepted with them)."""
        context = f"site {facts.site_id} client {facts.client_ip}"
        answer = await self._run("on_data", facts, context)
        if answer is _FAILED:
            return LOCAL_POLICY_FAILED
        try:
            checked = check_data_answer(answer, self._class_header)
        except HookError as error:
            self._failed("on_data", "exception", str(error), context, None)
            return LOCAL_POLICY_FAILED
        self._count("on_data", checked)
        return checked

    def note_bounce(self, upstream: str, recipient: str) -> None:
        """A hard bounce, remembered for on_route's facts (only while an on_route is loaded)."""
        if self.on_route is not None:
            self.bounces.note(upstream, recipient, self._clock())

    async def narrow_route(
        self,
        message_id: str,
        site_id: str,
        recipients: list[str],
        message_class: str,
        route: Route,
    ) -> Route:
        """``route`` as on_route reorders or narrows it; unchanged (said so) when it fails."""
        facts = route_facts(
            message_id, site_id, recipients, message_class, route, self.bounces, self._clock()
        )
        context = f"message {message_id} site {site_id}"
        answer = await self._run("on_route", facts, context)
        if answer is _FAILED:
            return route_kept(route, "see the log")
        try:
            narrowed = apply_choice(route, answer)
        except HookError as error:
            self._failed("on_route", "exception", str(error), context, None)
            return route_kept(route, "unusable answer")
        verdict = "accept" if narrowed is route else "route"
        self._metrics.policy_verdicts.labels("on_route", verdict).inc()
        return narrowed

    # -- Calling a hook.

    async def _gate(self, hook: str, facts: object, context: str) -> Verdict:
        answer = await self._run(hook, facts, context)
        if answer is _FAILED:
            return LOCAL_POLICY_FAILED
        try:
            verdict = check_verdict(answer)
        except HookError as error:
            self._failed(hook, "exception", str(error), context, None)
            return LOCAL_POLICY_FAILED
        self._count(hook, verdict)
        return verdict

    async def _run(self, hook: str, facts: object, context: str) -> object:
        loaded = self._loaded  # the hooks in force when the call starts, whatever a reload does
        function = loaded.hooks.get(hook) if loaded is not None else None
        if loaded is None or function is None:  # reloaded away since the caller looked: Accept
            return None
        try:
            # asyncio.timeout, not wait_for: no task per call (18 against 50 us a call)
            async with asyncio.timeout(loaded.timeout_seconds):
                if loaded.is_async[hook]:
                    return await function(facts)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._threads(), function, facts)
        except TimeoutError:
            why = f"no answer within {loaded.timeout_seconds:g} s"
            self._failed(hook, "timeout", why, context, None)
        except Exception as error:  # the operator's code: any failure is a 451, never a crash
            self._failed(hook, "exception", f"{type(error).__name__}: {error}", context, error)
        return _FAILED

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(SYNC_HOOK_THREADS, thread_name_prefix="policy-hook")
        return self._pool

    def _failed(
        self, hook: str, reason: str, why: str, context: str, error: Exception | None
    ) -> None:
        self._metrics.policy_hook_failures.labels(hook, reason).inc()
        module = self._loaded.module if self._loaded else "?"
        traced = error is not None and hook not in self._traced  # the first traceback only
        if traced:
            self._traced.add(hook)
        log.warning(
            "policy %s %s failed (%s): %s", module, hook, context, why[:500], exc_info=traced
        )

    def _count(self, hook: str, verdict: Verdict | tuple[HeaderField, ...]) -> None:
        if isinstance(verdict, tuple):
            name = "add_headers"
        else:
            name = {Accept: "accept", Reject: "reject", TempFail: "tempfail"}[type(verdict)]
        self._metrics.policy_verdicts.labels(hook, name).inc()


# -- Loading the module.


def load_policy(config: PolicyConfig) -> LoadedPolicy:
    """A fresh module object from ``config.module``'s current source, with its hooks."""
    module = _import_fresh(config)
    hooks: dict[str, Callable[[Any], Any]] = {}
    for name in HOOKS:
        hook = getattr(module, name, None)
        if hook is None:
            continue
        if not callable(hook):
            raise PolicyLoadError(f"{config.module}: {name} is not a function")
        hooks[name] = hook
    if not hooks:
        raise PolicyLoadError(f"{config.module} defines none of {', '.join(HOOKS)}")
    is_async = {name: inspect.iscoroutinefunction(hook) for name, hook in hooks.items()}
    return LoadedPolicy(config.module, config.timeout_seconds, hooks, is_async)


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles the file as it is now: a cached .pyc written in the same second as an
    edit of the same size would otherwise be taken for it."""

    def get_code(self, fullname: str) -> CodeType:
        source = self.get_data(self.path)
        return compile(source, self.path, "exec", dont_inherit=True)


def _import_fresh(config: PolicyConfig) -> ModuleType:
    path = config.path
    if path is not None:
        name = "relay_policy_" + re.sub(r"\W", "_", path.stem)
        spec = importlib.util.spec_from_file_location(
            name, path, loader=_SourceLoader(name, str(path))
        )
    else:
        name = config.module
        importlib.invalidate_caches()
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError) as error:
            raise PolicyLoadError(f"cannot import {name}: {error}") from None
        if found is None:
            raise PolicyLoadError(f"no module named {name} (is its directory on PYTHONPATH?)")
        spec = found
        if found.origin and found.origin.endswith(".py"):
            spec = importlib.util.spec_from_file_location(
                name,
                found.origin,
                loader=_SourceLoader(name, found.origin),
                submodule_search_locations=found.submodule_search_locations,
            )
    if spec is None or spec.loader is None:
        raise PolicyLoadError(f"cannot load {config.module}")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # while it runs: dataclasses and the like look it up there
    try:
        spec.loader.exec_module(module)
    except BaseException as error:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        if not isinstance(error, Exception):
            raise
        raise PolicyLoadError(f"cannot load {config.module}: {_described(error)}") from None
    return module


def _described(error: Exception) -> str:
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} ({error.filename}, line {error.lineno})"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}"
    return f"{type(error).__name__}: {error}"
