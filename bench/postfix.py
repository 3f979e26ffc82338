"""A private Postfix instance doing the same relay job as the relay, for comparison.

    inst = PostfixInstance(root=Path(tmp), port=2525, sink_port=2526)
    inst.start()
    ... send mail to 127.0.0.1:2525, it is relayed to [127.0.0.1]:2526 ...
    inst.queue_is_empty(); inst.cpu_seconds(); inst.pss_bytes()
    inst.stop()

Everything the instance owns lives under `root` (config, queue, data
directory, SASL database, log file). The system Postfix (/etc/postfix,
/var/spool/postfix) is neither used nor touched: the instance is started with
`postfix -c <root>/conf start`; run as root this does not need the directory
listed in /etc/postfix/main.cf alternate_config_directories (checked with
3.7.11), so /etc/postfix is left alone. The sendmail/postdrop submission path,
which would need that, is not used: mail arrives over SMTP only.

The configuration is an ordinary durable-queue relay as an operator would run
it: Debian's defaults for concurrency, connection caching, process limits
(except the smtpd listener's, which is `max_sessions`) and queue behaviour;
fsync is on; no tmpfs. Services run unchrooted so the per-instance SASL
database and certificates are reachable. Loopback only. Every wait is bounded.
Requires root (Postfix's master must start as root).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
APT_GET = "/usr/bin/apt-get"
DEBCONF_SET_SELECTIONS = "/usr/bin/debconf-set-selections"
APT_PACKAGES = ("postfix", "libsasl2-modules", "sasl2-bin")
SASLPASSWD2 = "/usr/sbin/saslpasswd2"
MAIL_OWNER = "postfix"

START_TIMEOUT = 60.0  # seconds for `postfix start` plus the first 220 greeting
STOP_TIMEOUT = 30.0  # seconds for `postfix stop` plus leftovers to exit
MESSAGE_SIZE_LIMIT = 64 * 1024 * 1024  # >= 60 MB as the workloads need

QUEUE_DIRS = ("incoming", "active", "deferred", "maildrop")


def ensure_installed() -> None:
    """Install postfix, libsasl2-modules and sasl2-bin if Postfix is missing.

    Uses debconf "No configuration" so the package does not configure (or
    start) a system mail server. Raises RuntimeError if that fails.
    """
    if os.path.exists(POSTFIX) and os.path.exists(SASLPASSWD2):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

    def run(argv: list[str], timeout: float, stdin: bytes | None = None) -> None:
        subprocess.run(  # noqa: S603 - fixed system executables, fixed arguments
            argv, input=stdin, env=env, check=True, timeout=timeout, capture_output=True
        )

    install = [APT_GET, "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    try:
        run(
            [DEBCONF_SET_SELECTIONS],
            60,
            b"postfix postfix/main_mailer_type select No configuration\n",
        )
        try:
            run(install, 900)
        except subprocess.CalledProcessError:  # stale or missing package lists
            run([APT_GET, "update"], 600)
            run(install, 900)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = ""
        if isinstance(exc, subprocess.CalledProcessError):
            detail = (exc.stderr or b"").decode(errors="replace")[-2000:]
        raise RuntimeError(
            f"could not install Postfix (apt-get install -y {' '.join(APT_PACKAGES)}): "
            f"{exc}\n{detail}"
        ) from exc
    if not os.path.exists(POSTFIX):
        raise RuntimeError(f"apt-get reported success but {POSTFIX} is still missing")


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(pid)
    return children


def _environ_has(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except OSError:
        return False


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _searchable_by(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _ensure_searchable(directory: Path, uid: int, gid: int) -> None:
    """Make sure user `postfix` can traverse every ancestor of the instance root.

    A private temporary directory (tempfile.mkdtemp() makes them 0700) inside
    the system temp dir gets search-only permission for others (o+x: no
    listing, no writing); anything else that blocks traversal is an error.
    """
    tmp = Path(tempfile.gettempdir()).resolve()
    for d in (directory, *directory.parents):
        st = d.stat()
        if _searchable_by(st, uid, gid):
            continue
        if d != tmp and tmp in d.parents and st.st_uid == os.geteuid():
            os.chmod(d, stat.S_IMODE(st.st_mode) | 0o001)
            continue
        raise RuntimeError(
            f"{d} is not searchable by user {MAIL_OWNER}, which Postfix's daemons run as; "
            f"put the instance root under a directory it can traverse (e.g. under {tmp})"
        )


# --------------------------------------------------------------------------- instance


@dataclass
class PostfixInstance:
    root: Path  # a fresh directory; config, queue and data dirs go under it
    port: int  # where its smtpd listens on 127.0.0.1
    sink_port: int  # it relays everything to [127.0.0.1]:sink_port (no TLS to the sink)
    tls: tuple[Path, Path] | None = None  # (cert chain, key) -> offer STARTTLS
    users: dict[str, str] | None = None  # SASL user -> password; AUTH only after STARTTLS
    max_sessions: int = 1200  # smtpd process limit (idle-connections workload opens 1,000)

    # ---- layout

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if self.users and not self.tls:
            raise ValueError("users (SASL AUTH) requires tls: AUTH is offered only after STARTTLS")

    @property
    def config_dir(self) -> Path:
        return self.root / "conf"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def sasl_dir(self) -> Path:
        # Debian's Postfix looks for <config_directory>/sasl/smtpd.conf (and
        # /usr/lib/sasl) whatever cyrus_sasl_config_path says, so the
        # configured path is that same directory.
        return self.config_dir / "sasl"

    @property
    def sasldb(self) -> Path:
        return self.root / "sasldb2"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    @property
    def hostname(self) -> str:
        # Distinct from the machine's name (and from any sink's greeting) so
        # Postfix's "mail loops back to myself" check cannot trigger; also the
        # SASL realm.
        return f"postfix-bench-{self.port}.localdomain"

    # ---- configuration

    def main_cf(self) -> str:
        lines = [
            "# Private benchmark instance: an ordinary durable-queue relay.",
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue_dir}",
            f"data_directory = {self.data_dir}",
            f"mail_owner = {MAIL_OWNER}",
            f"myhostname = {self.hostname}",
            "mydomain = localdomain",
            "myorigin = $myhostname",
            "smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)",
            "biff = no",
            "append_dot_mydomain = no",
            "readme_directory = no",
            # logging to a file under root through postlogd: no syslog needed
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {self.root}",
            f"syslog_name = postfix-bench-{self.port}",
            # loopback only, IPv4 only
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            # relay everything to the sink; nothing is delivered locally
            "mydestination =",
            "relay_domains =",
            f"relayhost = [127.0.0.1]:{self.sink_port}",
            "local_transport = error:local delivery disabled",
            "local_recipient_maps =",
            "alias_maps =",
            "alias_database =",
            # no DNS anywhere
            "smtp_host_lookup = native",
            "smtp_dns_support_level = disabled",
            "lmtp_host_lookup = native",
            "smtpd_peername_lookup = no",
            # no TLS towards the sink
            "smtp_tls_security_level = none",
            f"message_size_limit = {MESSAGE_SIZE_LIMIT}",
            "mailbox_size_limit = 0",
            # Debian's per-client limit of 50 concurrent connections would refuse
            # the loopback load generator (1,000 idle connections, 100 sessions);
            # its default exception list is $mynetworks, which is empty when AUTH
            # is required, so name loopback explicitly.
            "smtpd_client_event_limit_exceptions = 127.0.0.0/8",
        ]
        if self.users:
            lines += [
                # loopback is NOT trusted: relaying needs AUTH (after STARTTLS)
                "mynetworks =",
                "smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination",
                "smtpd_sasl_auth_enable = yes",
                "smtpd_sasl_type = cyrus",
                "smtpd_sasl_path = smtpd",
                f"cyrus_sasl_config_path = {self.sasl_dir}",
                "smtpd_sasl_local_domain = $myhostname",
                "smtpd_sasl_security_options = noanonymous",
                "smtpd_tls_auth_only = yes",
            ]
        else:
            lines += [
                "mynetworks = 127.0.0.0/8",
                "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
                "smtpd_sasl_auth_enable = no",
            ]
        if self.tls:
            chain, key = (Path(p).resolve() for p in self.tls)
            lines += [
                "smtpd_tls_security_level = may",
                f"smtpd_tls_cert_file = {chain}",
                f"smtpd_tls_key_file = {key}",
            ]
        else:
            lines.append("smtpd_tls_security_level = none")
        return "\n".join(lines) + "\n"

    def master_cf(self) -> str:
        # Debian's master.cf (3.7) with chroot = n everywhere, the smtpd
        # listener on 127.0.0.1:<port> with max_sessions processes, and the
        # pipe(8) examples (maildrop, uucp, ...) dropped.
        # service type private unpriv chroot wakeup maxproc command
        rows = [
            f"127.0.0.1:{self.port} inet n - n - {self.max_sessions} smtpd",
            "pickup    unix  n  -  n  60     1  pickup",
            "cleanup   unix  n  -  n  -      0  cleanup",
            "qmgr      unix  n  -  n  300    1  qmgr",
            "tlsmgr    unix  -  -  n  1000?  1  tlsmgr",
            "rewrite   unix  -  -  n  -      -  trivial-rewrite",
            "bounce    unix  -  -  n  -      0  bounce",
            "defer     unix  -  -  n  -      0  bounce",
            "trace     unix  -  -  n  -      0  bounce",
            "verify    unix  -  -  n  -      1  verify",
            "flush     unix  n  -  n  1000?  0  flush",
            "proxymap  unix  -  -  n  -      -  proxymap",
            "proxywrite unix -  -  n  -      1  proxymap",
            "smtp      unix  -  -  n  -      -  smtp",
            "relay     unix  -  -  n  -      -  smtp",
            f"  -o syslog_name=postfix-bench-{self.port}/$service_name",
            "showq     unix  n  -  n  -      -  showq",
            "error     unix  -  -  n  -      -  error",
            "retry     unix  -  -  n  -      -  error",
            "discard   unix  -  -  n  -      -  discard",
            "local     unix  -  n  n  -      -  local",
            "virtual   unix  -  n  n  -      -  virtual",
            "lmtp      unix  -  -  n  -      -  lmtp",
            "anvil     unix  -  -  n  -      1  anvil",
            "scache    unix  -  -  n  -      1  scache",
            "postlog   unix-dgram n - n  -   1  postlogd",
        ]
        return "\n".join(rows) + "\n"

    def sasl_conf(self) -> str:
        return (
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            "mech_list: PLAIN LOGIN\n"
            f"sasldb_path: {self.sasldb}\n"
        )

    def _postfix(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LANG="C", LC_ALL="C")
        env.pop("MAIL_CONFIG", None)
        return subprocess.run(  # noqa: S603 - fixed executable, our own arguments
            [POSTFIX, "-c", str(self.config_dir), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _prepare(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("a Postfix instance must be started as root")
        if not os.path.exists(POSTFIX):
            raise RuntimeError(f"{POSTFIX} is missing: call ensure_installed() first")
        owner = pwd.getpwnam(MAIL_OWNER)
        postfix_gid = grp.getgrnam(MAIL_OWNER).gr_gid
        self.root.mkdir(parents=True, exist_ok=True)
        # Postfix daemons run as `postfix` after dropping privileges and must
        # traverse root (master.lock in data_directory, SASL db, log file).
        os.chmod(self.root, 0o755)  # noqa: S103 - postfix must traverse it
        _ensure_searchable(self.root.parent, owner.pw_uid, owner.pw_gid)
        for d in (self.config_dir, self.sasl_dir):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o755)  # noqa: S103 - config must be readable
        # create-missing (run by `postfix start`) makes the subdirectories
        # with the right owners; queue_directory itself must be root's.
        self.queue_dir.mkdir(exist_ok=True)
        os.chown(self.queue_dir, 0, 0)
        os.chmod(self.queue_dir, 0o755)  # noqa: S103 - as Postfix installs it
        self.data_dir.mkdir(exist_ok=True)
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        os.chmod(self.data_dir, 0o700)
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(self.master_cf())
        if self.users:
            (self.sasl_dir / "smtpd.conf").write_text(self.sasl_conf())
            if self.sasldb.exists():
                self.sasldb.unlink()
            for user, password in self.users.items():
                r = subprocess.run(  # noqa: S603 - fixed executable
                    [SASLPASSWD2, "-f", str(self.sasldb), "-p", "-c", "-u", self.hostname, user],
                    input=password.encode(),
                    capture_output=True,
                    timeout=30,
                )
                if r.returncode != 0:
                    raise RuntimeError(
                        f"saslpasswd2 failed for {user!r}: {r.stderr.decode(errors='replace')}"
                    )
            # smtpd reads the database as `postfix`, after dropping privileges
            os.chown(self.sasldb, 0, postfix_gid)
            os.chmod(self.sasldb, 0o640)
        if self.tls:
            for p in self.tls:
                if not Path(p).is_file():
                    raise RuntimeError(f"TLS file {p} does not exist")

    # ---- lifecycle

    def _read_master_pid(self) -> int | None:
        try:
            text = (self.queue_dir / "pid" / "master.pid").read_text().strip()
            pid = int(text)
        except (OSError, ValueError):
            return None
        # guard against a stale pid file whose pid was reused by someone else
        if not _alive(pid) or not _environ_has(pid, self._env_entry()):
            return None
        return pid

    def _env_entry(self) -> bytes:
        # `postfix -c DIR` exports MAIL_CONFIG=DIR; master and every daemon keep it
        # (it is in import_environment), which identifies this instance's processes.
        return b"MAIL_CONFIG=" + str(self.config_dir).encode()

    def _log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no maillog)"

    def start(self) -> None:
        """Write the configuration, `postfix -c DIR start`, wait for a 220 greeting."""
        self._prepare()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            r = self._postfix("start", timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            self._kill_leftovers(set())
            raise RuntimeError(f"`postfix start` timed out:\n{self._log_tail()}") from exc
        if r.returncode != 0:
            self._kill_leftovers(set())
            raise RuntimeError(
                f"`postfix -c {self.config_dir} start` failed ({r.returncode}):\n"
                f"{(r.stdout + r.stderr)[-3000:]}\n--- maillog ---\n{self._log_tail()}"
            )
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.settimeout(5)
                    banner = s.recv(512)
                    if banner.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
                    last_error = RuntimeError(f"unexpected greeting {banner!r}")
            except OSError as exc:
                last_error = exc
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"Postfix on 127.0.0.1:{self.port} did not answer 220 within "
            f"{START_TIMEOUT:.0f}s ({last_error}):\n{self._log_tail()}"
        )

    def _env_matches(self) -> set[int]:
        """Processes started with MAIL_CONFIG=<our config dir> (master and children)."""
        entry = self._env_entry()
        return {pid for pid in _all_pids() if pid != os.getpid() and _environ_has(pid, entry)}

    def _kill_leftovers(self, known: set[int]) -> None:
        candidates = {p for p in known | self._env_matches() if _alive(p)}
        for pid in candidates:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while time.monotonic() < end and any(_alive(p) for p in candidates):
            time.sleep(0.05)

    def stop(self) -> None:
        """`postfix -c DIR stop`, wait (bounded), then SIGKILL this instance's leftovers."""
        known = set(self.pids()) | self._env_matches()
        if not known:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._postfix("stop", timeout=STOP_TIMEOUT)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            live = {p for p in known | self._env_matches() if _alive(p)}
            if not live:
                break
            time.sleep(0.05)
        self._kill_leftovers(known)

    def flush(self) -> None:
        """`postqueue -f`: try every deferred message now (the sink is back)."""
        env = dict(os.environ, LANG="C", LC_ALL="C")
        env.pop("MAIL_CONFIG", None)
        subprocess.run(  # noqa: S603 - fixed executable, our own arguments
            [POSTQUEUE, "-c", str(self.config_dir), "-f"], env=env, check=True, timeout=60
        )

    # ---- measurements

    def queue_is_empty(self) -> bool:
        """No queue file in incoming, active, deferred or maildrop."""
        for name in QUEUE_DIRS:
            for _dirpath, _dirnames, filenames in os.walk(self.queue_dir / name):
                if filenames:
                    return False
        return True

    def pids(self) -> list[int]:
        """The master (from its pid file) and all its live descendants."""
        master = self._read_master_pid()
        if master is None:
            return []
        children = _children_map()
        result: list[int] = []
        todo = [master]
        while todo:
            pid = todo.pop()
            if not _alive(pid):
                continue
            result.append(pid)
            todo.extend(children.get(pid, ()))
        return result

    def cpu_seconds(self) -> float:
        """User+system CPU seconds the instance has used so far."""
        # utime+stime of every live process plus cutime+cstime (reaped
        # children, recursively) of every live process: the master's covers the
        # smtpd/cleanup/smtp processes that already exited.
        ticks = 0
        for pid in self.pids():
            fields = _stat_fields(pid)
            if fields is None:
                continue
            # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
        return ticks / os.sysconf("SC_CLK_TCK")

    def pss_bytes(self) -> int:
        """Sum of Pss over pids()."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1]) * 1024
                            break
            except (OSError, ValueError):
                continue
        return total
