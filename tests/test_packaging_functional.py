"""Packaging: the systemd unit (checked by systemd-analyze) and the Dockerfile (checked statically).

No docker engine is assumed, so the image is not built; the Dockerfile is parsed
and its HEALTHCHECK command is run against a local HTTP server instead.
"""

from __future__ import annotations

import http.server
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "relay.service"
DOCKERFILE = ROOT / "Dockerfile"
INSTALLED_BINARY = "/usr/local/bin/relay"
TIMEOUT = 60


# -- systemd unit


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (keys may repeat, so not configparser)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_for_verify(tmp_path: Path, extra: str = "") -> Path:
    """A copy of the unit whose ExecStart points at this environment's `relay` script.

    systemd-analyze verify refuses an ExecStart binary that does not exist, and
    /usr/local/bin/relay is only there on an installed machine.
    """
    relay = Path(sys.executable).parent / "relay"
    assert relay.is_file(), (
        f"console script {relay} missing: install the project (pip install -e .)"
    )
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    text = text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={relay} ")
    if extra:
        text = text.replace("[Service]\n", f"[Service]\n{extra}\n")
    copy = tmp_path / "relay.service"  # verify derives the unit name from the file name
    copy.write_text(text)
    return copy


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def verify(unit: Path) -> tuple[int, list[str]]:
    """Run systemd-analyze verify; return its exit code and every line it printed.

    It exits 0 even for unknown keys and unparsable values (it only warns), so
    callers must look at the output, not just the code.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (package systemd): cannot verify the unit")
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return result.returncode, lines


MISSING_USER = re.compile(
    r"\b(user|group)\b.*\b(not found|does not exist|no such|failed to resolve)", re.IGNORECASE
)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    code, lines = verify(unit_for_verify(tmp_path))
    # systemd 252 does not resolve User= at verify time; a newer one might, and
    # the relay user only exists on a machine set up per the unit's comment.
    if not user_exists("relay"):
        lines = [line for line in lines if not MISSING_USER.search(line)]
    assert code == 0, "\n".join(lines)
    assert lines == [], "systemd-analyze verify complained:\n" + "\n".join(lines)


def test_systemd_analyze_verify_does_catch_mistakes(tmp_path: Path) -> None:
    """The check above is only worth something if a bad directive is reported."""
    _, lines = verify(unit_for_verify(tmp_path, extra="ProtectClok=yes\nUMask=banana"))
    output = "\n".join(lines)
    assert "ProtectClok" in output, output
    assert "banana" in output, output


def test_unit_runs_relay_as_dedicated_user_with_hardening() -> None:
    unit = parse_unit(UNIT.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}

    assert service["User"] == "relay"
    assert service["Group"] == "relay"
    assert shlex.split(service["ExecStart"]) == [
        INSTALLED_BINARY,
        "serve",
        "-c",
        "/etc/relay/config.yaml",
    ]
    assert service["WorkingDirectory"] == "/var/lib/relay"
    assert service["StateDirectory"] == "relay"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    # The relay drains for up to ~30 s; systemd must not SIGKILL it before that.
    assert int(service["TimeoutStopSec"]) > 30

    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert "/var/lib/relay" in service["ReadWritePaths"].split()
    assert service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert "AmbientCapabilities" not in service
    assert service["UMask"] == "0077"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["SystemCallFilter"] == "@system-service"

    assert unit["Unit"]["After"] == ["network-online.target"]
    assert unit["Unit"]["Wants"] == ["network-online.target"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# -- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with line continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            name, _, args = whole.partition(" ")
            instructions.append((name.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def only(stage: list[tuple[str, str]], name: str) -> str:
    found = [args for instruction, args in stage if instruction == name]
    assert len(found) == 1, f"expected one {name} in the final stage, found {found}"
    return found[0]


def healthcheck_command(stage: list[tuple[str, str]]) -> list[str]:
    healthcheck = only(stage, "HEALTHCHECK")
    _, sep, command = healthcheck.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {healthcheck}"
    argv = json.loads(command)  # exec form: no shell needed in the image
    assert isinstance(argv, list)
    return [str(arg) for arg in argv]


def test_dockerfile_runs_relay_serve_as_non_root_with_volume_and_healthcheck() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    stage = final_stage(instructions)
    assert stage[0][1].startswith("python:3.11-slim")

    user = only(stage, "USER").split(":")[0]
    assert user not in {"root", "0"}, f"runs as root: USER {user}"
    assert user in {"relay", "10001"}
    names = [name for name, _ in stage]
    assert names.index("USER") < names.index("CMD"), "USER must come before CMD"

    assert "/var/lib/relay" in json.loads(only(stage, "VOLUME"))
    assert only(stage, "WORKDIR") == "/var/lib/relay"
    assert set(only(stage, "EXPOSE").split()) == {"2525", "8025"}
    assert only(stage, "STOPSIGNAL") == "SIGTERM"
    assert json.loads(only(stage, "CMD")) == ["relay", "serve", "-c", "/etc/relay/config.yaml"]

    argv = healthcheck_command(stage)
    assert argv[:2] == ["python", "-c"], argv
    assert "http://127.0.0.1:8025/healthz" in argv[2]

    # The project is installed with pip from the build context, somewhere.
    assert any(
        name == "RUN" and "pip install --no-cache-dir ." in args for name, args in instructions
    )


class _Health(http.server.BaseHTTPRequestHandler):
    """Answers /healthz with whatever status the test sets on the server."""

    server: HealthServer

    def do_GET(self) -> None:
        self.send_response(self.server.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


class HealthServer(http.server.HTTPServer):
    status = 200


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = HealthServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_healthcheck(port: int) -> int:
    """Run the Dockerfile's HEALTHCHECK command, aimed at `port` instead of 8025."""
    stage = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    argv = healthcheck_command(stage)
    code = argv[2].replace("127.0.0.1:8025", f"127.0.0.1:{port}")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=TIMEOUT, check=False
    )
    return result.returncode


def test_dockerfile_healthcheck_passes_on_200_and_fails_otherwise(
    health_server: HealthServer,
) -> None:
    port = health_server.server_address[1]
    assert run_healthcheck(port) == 0
    health_server.status = 503
    assert run_healthcheck(port) == 1

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    assert run_healthcheck(closed_port) == 1
