"""`relay serve` with more than one worker: one supervisor, N worker processes.

The supervisor decides who listens and who runs; it does no SMTP, no delivery
and no database work of its own:

1. `relay serve --prepare-only` runs once, in a process of its own: the data
   directory, migrations, secret key and development certificate are made
   there, so two workers never race to make them, and a user mistake is one
   line before anything listens.
2. Every SMTP listener, the admin port and the HTTP port are bound here, before any worker
   starts (so ``port: 0`` works: the port is learned here). Each address gets
   one SO_REUSEPORT socket per worker, and the kernel spreads new connections
   over them by a hash of the client's address and port: 200 connections over
   2 workers split between 100/100 and 86/114 in 10 runs here (1, 10 and 50 at
   once); one socket shared by both split up to 71/129, as whichever worker's
   loop happens to wait takes the next one. A plain bind first makes sure
   nothing listens there already, which SO_REUSEPORT alone would not say: a
   second relay would silently share the port.
3. The workers are `relay serve -c PATH` with RELAY_WORKER naming the sockets
   they inherit (relay/worker_handoff.py) and PROMETHEUS_MULTIPROC_DIR naming a
   fresh directory under ``data_dir``, so /metrics answers for all of them.

SIGHUP reaches every worker (one still starting gets it once it is ready: it
may have read the file before the change). SIGTERM/SIGINT reaches every
worker; the supervisor waits for them and exits 0 when each stopped cleanly.
A worker that dies unasked is started again on the same sockets: the
connections the kernel gave its sockets meanwhile wait in their backlog, and
the new process frees the dead one's leases when it starts. Deaths soon after
a start back off, and too many in a row stop the relay (relay/core/restarts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from relay.config import Config, is_loopback
from relay.core.restarts import GiveUp, RestartPolicy, after_death
from relay.login_link_controller import login_link_line
from relay.secret_box import load_or_create_key
from relay.worker_handoff import ENV, READY, Handoff

log = logging.getLogger(__name__)
BACKLOG = 100  # asyncio's default for create_server
METRICS_DIRECTORY = "metrics"  # under data_dir: PROMETHEUS_MULTIPROC_DIR of the workers
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

DEFAULT_POLICY = RestartPolicy()
Group = list[socket.socket]  # one address: a socket per worker


class BindError(Exception):
    """An address the relay cannot listen on: one line for the operator."""


@dataclass
class Sockets:
    """Everything bound for the workers: per listener and for admin, a group per address."""

    listeners: dict[str, list[Group]] = field(default_factory=dict)
    admin: list[Group] = field(default_factory=list)
    http: list[Group] = field(default_factory=list)  # the public HTTP listener, when configured

    def handoff(self, index: int, workers: int, control: int) -> Handoff:
        """What worker ``index`` (1..workers) inherits: its socket of every group."""
        return Handoff(
            index,
            workers,
            {name: _theirs(groups, index) for name, groups in self.listeners.items()},
            _theirs(self.admin, index),
            control,
            _theirs(self.http, index),
        )

    @property
    def ports(self) -> list[int]:
        return [int(groups[0][0].getsockname()[1]) for groups in self.listeners.values()]

    @property
    def admin_port(self) -> int:
        return int(self.admin[0][0].getsockname()[1])

    def close(self) -> None:
        for groups in [*self.listeners.values(), self.admin, self.http]:
            for group in groups:
                for sock in group:
                    sock.close()


def _theirs(groups: list[Group], index: int) -> tuple[int, ...]:
    return tuple(group[index - 1].fileno() for group in groups)


def bind_all(config: Config, workers: int) -> Sockets:
    """Every SMTP listener, the admin port and the public HTTP port, ``workers`` sockets per
    address; or BindError."""
    sockets = Sockets()
    try:
        for listener in config.listeners:
            where = f"listener {listener.name}"
            sockets.listeners[listener.name] = bind(listener.host, listener.port, workers, where)
        sockets.admin = bind(config.admin.host, config.admin.port, workers, "admin")
        if config.http is not None:
            sockets.http = bind(config.http.host, config.http.port, workers, "http")
    except BindError:
        sockets.close()
        raise
    return sockets


def bind(host: str, port: int, count: int, what: str) -> list[Group]:
    """``count`` SO_REUSEPORT sockets on each address of ``host``, all on one port."""
    groups: list[Group] = []
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in found))
        for family, address in addresses:
            groups.append(_group(family, (address[0], port, *address[2:]), count))
            port = port or groups[-1][0].getsockname()[1]  # port 0: every address on the first's
    except OSError as error:
        for group in groups:
            for sock in group:
                sock.close()
        reason = error.strerror or str(error)
        raise BindError(f"{what}: cannot listen on {host}:{port}: {reason}") from None
    return groups


def _group(family: int, address: tuple[object, ...], count: int) -> Group:
    with _socket(family) as probe:  # fails when anything listens there, with SO_REUSEPORT or not
        probe.bind(address)
        address = probe.getsockname()  # port 0: the kernel's choice
    group: Group = []
    try:
        for _ in range(count):
            group.append(_socket(family))
            group[-1].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            group[-1].bind(address)
            group[-1].listen(BACKLOG)
    except OSError:
        for sock in group:
            sock.close()
        raise
    return group


def _socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio: past TIME_WAIT
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def supervise(path: Path, config: Config, workers: int, log_level: str) -> int:
    """`relay serve` with ``workers`` > 1, to its end: the exit status."""
    os.umask(0o077)
    command = [
        sys.executable,
        "-m",
        "relay.cli",
        "serve",
        "-c",
        str(path),
        "--log-level",
        log_level,
    ]
    prepared = subprocess.run([*command, "--prepare-only"], check=False)  # noqa: S603 (our own)
    if prepared.returncode != 0:
        return prepared.returncode if prepared.returncode > 0 else 1
    try:
        sockets = bind_all(config, workers)
    except BindError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 1
    metrics = _fresh_directory(config.server.data_dir / METRICS_DIRECTORY)
    try:
        supervisor = Supervisor(
            command, workers, sockets, metrics, config.admin.host, login_link=_login_link(config)
        )
        return asyncio.run(supervisor.run())
    finally:
        sockets.close()
        shutil.rmtree(metrics, ignore_errors=True)


def _login_link(config: Config) -> Callable[[int], str] | None:
    """The dashboard's one-time login link for the admin port, when it has no other way in
    (no admin tokens, a loopback admin listener); the workers take it (one of them, once)."""
    admin = config.admin
    if admin.tokens or not is_loopback(admin.host):
        return None
    secret = load_or_create_key(config.server.secret_key_file)  # made by --prepare-only
    scheme = "https" if admin.cert_file else "http"
    return lambda port: login_link_line(secret, scheme, admin.host, port, time.time())


def _fresh_directory(path: Path) -> Path:
    """An empty directory: what a killed run left there counted workers that are gone."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return path


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    ready: bool = False
    reload_due: bool = False  # a SIGHUP came while it was starting
    quick_deaths: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    def __init__(
        self,
        command: list[str],
        workers: int,
        sockets: Sockets,
        metrics: Path,
        admin_host: str,
        policy: RestartPolicy = DEFAULT_POLICY,
        clock: Callable[[], float] = time.monotonic,
        login_link: Callable[[int], str] | None = None,
    ) -> None:
        self._login_link = login_link
        self._command = command
        self._workers = [_Worker(index) for index in range(1, workers + 1)]
        self._sockets = sockets
        self._metrics = metrics
        self._admin_host = admin_host
        self._policy = policy
        self._clock = clock
        self._stopped = asyncio.Event()  # set by the stop: no more starts
        self._failed: int | None = None  # the exit status when a worker could not be kept
        self._announced = False
        self._watchers: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for number in STOP_SIGNALS:
            loop.add_signal_handler(number, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        clean = await asyncio.gather(*(self._keep(worker) for worker in self._workers))
        if self._failed is not None:
            return self._failed
        log.info("stopped")
        return 0 if all(clean) else 1

    def stop(self) -> None:
        """SIGTERM to every worker; no more restarts."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping: every worker finishes its work")
        self._sockets.close()  # the workers still hold theirs; when they close them, refused
        for worker in self._workers:
            if worker.alive:
                self._signal(worker, signal.SIGTERM)

    def reload(self) -> None:
        """SIGHUP to every worker that is ready; one still starting gets it once ready."""
        log.info("SIGHUP: every worker re-reads the configuration")
        for worker in self._workers:
            if worker.alive and worker.ready:
                self._signal(worker, signal.SIGHUP)
            elif worker.alive:
                worker.reload_due = True

    async def _keep(self, worker: _Worker) -> bool:
        """One worker until the stop, started again when it dies; whether it ended cleanly."""
        while True:
            process = await self._start(worker)
            code = await process.wait()
            if self._stopped.is_set():
                # Killed by our SIGTERM before it could handle it: it had started nothing.
                early = not worker.ready and -code in STOP_SIGNALS
                return code == 0 or early
            mark_process_dead(process.pid, str(self._metrics))  # type: ignore[no-untyped-call]
            if not self._announced:
                log.error("worker %d %s while starting: stopping", worker.index, _ended(code))
                self._fail(code if code > 0 else 1)
                return False
            decision = after_death(
                self._policy, worker.started_at, self._clock(), worker.quick_deaths
            )
            if isinstance(decision, GiveUp):
                log.error(
                    "worker %d %s within %g s of its start %d times in a row: "
                    "giving up, the relay stops (the worker's errors are above)",
                    worker.index,
                    _ended(code),
                    self._policy.quick_seconds,
                    decision.quick_deaths,
                )
                self._fail(1)
                return False
            worker.quick_deaths = decision.quick_deaths
            log.error(
                "worker %d (pid %d) %s; starting it again%s",
                worker.index,
                process.pid,
                _ended(code),
                f" in {decision.delay:g} s" if decision.delay else "",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), decision.delay)
            if self._stopped.is_set():
                return True

    async def _start(self, worker: _Worker) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair()
        handoff = self._sockets.handoff(worker.index, len(self._workers), theirs.fileno())
        environment = {**os.environ, ENV: handoff.to_env(), MULTIPROCESS_DIR: str(self._metrics)}
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command, env=environment, pass_fds=handoff.descriptors()
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.process, worker.started_at = process, self._clock()
        worker.ready = worker.reload_due = False
        if self._stopped.is_set():  # the stop came while it was being started
            self._signal(worker, signal.SIGTERM)
        watcher = asyncio.create_task(self._watch(worker, process, ours))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return process

    async def _watch(
        self, worker: _Worker, process: asyncio.subprocess.Process, control: socket.socket
    ) -> None:
        """Wait for the worker's "ready"; hold the control socket open while it lives."""
        control.setblocking(False)
        with control:  # closed (the worker's end of file) only when it is gone or we are
            try:
                said = await asyncio.get_running_loop().sock_recv(control, 64)
            except OSError:
                said = b""
            if said.startswith(READY) and worker.process is process:
                worker.ready = True
                if worker.reload_due and not self._stopped.is_set():
                    self._signal(worker, signal.SIGHUP)
                self._announce()
            await process.wait()

    def _announce(self) -> None:
        if self._announced or not all(worker.ready for worker in self._workers):
            return
        self._announced = True
        http = ""
        if self._sockets.http:
            http = f", http port {self._sockets.http[0][0].getsockname()[1]}"
        log.info(
            "relay ready: SMTP %s, admin %s:%d%s, %d workers (pids %s)",
            self._sockets.ports,
            self._admin_host,
            self._sockets.admin_port,
            http,
            len(self._workers),
            " ".join(str(w.process.pid) for w in self._workers if w.process is not None),
        )
        if self._login_link is not None:
            log.info("%s", self._login_link(self._sockets.admin_port))

    def _fail(self, status: int) -> None:
        if self._failed is None:
            self._failed = status
        self.stop()

    @staticmethod
    def _signal(worker: _Worker, number: int) -> None:
        assert worker.process is not None
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(number)


def _ended(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
