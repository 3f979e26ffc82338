"""Ordinary clients work unchanged: curl, swaks, Python smtplib, Nodemailer, PHPMailer.

Each client is a real, separate program (smtplib excepted: it runs in a thread) talking to
`relay serve` as a subprocess over STARTTLS + AUTH with the site's credential, trusting the
test CA. The relay delivers to an in-test recording sink; each test checks that the client
exited 0 and that the sink got the message with the From rewritten and the body intact.

External tools are skipped with a reason when missing. CI installs the Debian packages
`swaks`, `php-cli` and `libphp-phpmailer`; Nodemailer is installed with npm into
tests/.cache/node (kept between runs, never committed).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest

from tests.conftest import (
    SITE_PASSWORD,
    Sink,
    SinkFactory,
    base_config,
    smtp_upstream,
    write_config,
)
from tests.test_process_functional import RelayProcess

pytestmark = pytest.mark.slow

SENDER = "a@shop.example.com"
RECIPIENT = "b@example.org"
REWRITTEN_FROM = "Sales Team <sales@example.com>"
CLIENT_TIMEOUT = 60  # seconds for any one client run
SINK_TIMEOUT = 20  # seconds for the relay to deliver to the sink

NODE_CACHE = Path(__file__).parent / ".cache" / "node"  # in .gitignore, survives runs
PHPMAILER_AUTOLOAD = Path("/usr/share/php/libphp-phpmailer/autoload.php")  # libphp-phpmailer


@dataclass
class Setup:
    relay: RelayProcess
    port: int
    sink: Sink
    ca_file: Path
    tmp_path: Path


@pytest.fixture
async def relay(
    tmp_path: Path, make_sink: SinkFactory, cert_files: tuple[Path, Path, Path]
) -> AsyncIterator[Setup]:
    """`relay serve` with a STARTTLS listener on the trustme cert, delivering to a sink."""
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    process = RelayProcess(write_config(tmp_path, config))
    try:
        port = await asyncio.to_thread(process.wait_ready)
        yield Setup(process, port, sink, cert_files[2], tmp_path)
    finally:
        assert await asyncio.to_thread(process.stop) == 0, "".join(process.lines)


async def run_client(
    setup: Setup, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a client program off the event loop (the sink lives on it); it must exit 0."""
    result = await asyncio.to_thread(
        subprocess.run,
        argv,
        cwd=setup.tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        errors="replace",  # debug output may hold raw bytes (PHPMailer's TLS errors)
        timeout=CLIENT_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"{argv[0]} exited {result.returncode}\n--- stdout\n{result.stdout}"
        f"\n--- stderr\n{result.stderr}\n--- relay log\n{''.join(setup.relay.lines)}"
    )
    return result


async def assert_delivered(setup: Setup, marker: str) -> None:
    """The sink got exactly one message: From rewritten, body (with `marker`) intact."""
    try:
        received = await setup.sink.handler.wait_for(1, seconds=SINK_TIMEOUT)
    except TimeoutError:
        pytest.fail("the sink received nothing; relay log:\n" + "".join(setup.relay.lines))
    assert len(received) == 1
    message = received[0]
    assert message.rcpt_tos == [RECIPIENT]
    parsed = BytesParser(policy=default_policy).parsebytes(message.content)
    assert parsed["From"] == REWRITTEN_FROM
    body = parsed.get_body(preferencelist=("plain",))
    assert body is not None, message.content
    text = body.get_content()
    assert marker in text, message.content
    assert "second line, after a blank one" in text, message.content
    assert not setup.relay.log_has("Traceback"), "".join(setup.relay.lines)


def body_text(marker: str) -> str:
    return f"{marker}\n\nsecond line, after a blank one\n"


# -- curl


@pytest.fixture
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (Debian package curl)")
    return path


async def test_curl(curl: str, relay: Setup) -> None:
    marker = "curl body 5c1e"
    message = (
        f"From: Shop <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: from curl\r\n\r\n"
        + body_text(marker).replace("\n", "\r\n")
    )
    upload = relay.tmp_path / "curl-message.eml"
    upload.write_bytes(message.encode())
    await run_client(
        relay,
        [
            curl, "--silent", "--show-error", "--max-time", str(CLIENT_TIMEOUT),
            "--url", f"smtp://127.0.0.1:{relay.port}",
            "--ssl-reqd", "--cacert", str(relay.ca_file),
            "--mail-from", SENDER, "--mail-rcpt", RECIPIENT,
            "--user", f"shop:{SITE_PASSWORD}",
            "--upload-file", str(upload),
        ],
    )  # fmt: skip
    await assert_delivered(relay, marker)


# -- swaks


@pytest.fixture
def swaks() -> str:
    path = shutil.which("swaks")
    if path is None:
        pytest.skip("swaks is not installed (Debian package swaks)")
    support = subprocess.run(
        [path, "--support"], capture_output=True, text=True, timeout=CLIENT_TIMEOUT
    )
    if "TLS supported" not in support.stdout + support.stderr:
        pytest.skip("swaks lacks TLS support (Debian package libnet-ssleay-perl)")
    return path


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks(swaks: str, relay: Setup, mechanism: str) -> None:
    # swaks verifies nothing by default: --tls-verify with the test CA makes it check.
    marker = f"swaks {mechanism} body 9b2d"
    await run_client(
        relay,
        [
            swaks, "--server", f"127.0.0.1:{relay.port}", "--timeout", "30",
            "--tls", "--tls-verify", "--tls-ca-path", str(relay.ca_file),
            "--auth", mechanism, "--auth-user", "shop", "--auth-password", SITE_PASSWORD,
            "--from", SENDER, "--to", RECIPIENT,
            "--header", f"Subject: from swaks {mechanism}",
            "--body", body_text(marker),
        ],
    )  # fmt: skip
    await assert_delivered(relay, marker)


# -- Python smtplib (in a thread: the sink needs the event loop)


async def test_python_smtplib(relay: Setup) -> None:
    marker = "smtplib body 3f7a"
    message = EmailMessage()
    message["From"] = f"Shop <{SENDER}>"
    message["To"] = RECIPIENT
    message["Subject"] = "from smtplib"
    message.set_content(body_text(marker))
    context = ssl.create_default_context(cafile=str(relay.ca_file))

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=CLIENT_TIMEOUT) as client:
            client.starttls(context=context)
            client.login("shop", SITE_PASSWORD)
            client.send_message(message)

    await asyncio.to_thread(send)
    await assert_delivered(relay, marker)


# -- Nodemailer

NODEMAILER_SCRIPT = """
const fs = require("fs");
const path = require("path");
const settings = JSON.parse(process.argv[2]);
const nodemailer = require(path.join(settings.modules, "nodemailer"));
const transport = nodemailer.createTransport({
  host: "127.0.0.1",
  port: settings.port,
  secure: false,
  requireTLS: true,
  auth: { user: "shop", pass: settings.password },
  tls: { ca: fs.readFileSync(settings.ca) },
  connectionTimeout: 30000,
  greetingTimeout: 30000,
  socketTimeout: 30000,
});
transport
  .sendMail({
    from: "Shop <" + settings.sender + ">",
    to: settings.recipient,
    subject: "from nodemailer",
    text: settings.text,
  })
  .then((info) => {
    console.log(JSON.stringify(info));
    transport.close();
  })
  .catch((error) => {
    console.error(error);
    process.exit(1);
  });
"""


def install_nodemailer(npm: str) -> Path:
    """nodemailer@6 in NODE_CACHE (once; a lock keeps parallel runs from racing)."""
    modules = NODE_CACHE / "node_modules"
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    with open(NODE_CACHE / ".install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (modules / "nodemailer" / "package.json").exists():
            try:
                result = subprocess.run(
                    [npm, "install", "--prefix", str(NODE_CACHE), "--no-audit", "--no-fund",
                     "--no-save", "nodemailer@6"],
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                pytest.skip("npm install nodemailer@6 timed out after 120 s")
            if result.returncode != 0:
                pytest.skip(f"npm install nodemailer@6 failed: {result.stderr.strip()[-500:]}")
    return modules


@pytest.fixture
def nodemailer() -> tuple[str, Path]:
    """(node, the node_modules directory holding nodemailer)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for Nodemailer (Debian packages nodejs, npm)")
    return node, install_nodemailer(npm)


async def test_nodemailer(nodemailer: tuple[str, Path], relay: Setup) -> None:
    node, modules = nodemailer
    marker = "nodemailer body 7e40"
    script = relay.tmp_path / "send.js"
    script.write_text(NODEMAILER_SCRIPT)
    settings = {
        "modules": str(modules),
        "port": relay.port,
        "password": SITE_PASSWORD,
        "ca": str(relay.ca_file),
        "sender": SENDER,
        "recipient": RECIPIENT,
        "text": body_text(marker),
    }
    await run_client(relay, [node, str(script), json.dumps(settings)])
    await assert_delivered(relay, marker)


# -- PHPMailer

PHPMAILER_SCRIPT = """<?php
require $argv[1];
use PHPMailer\\PHPMailer\\PHPMailer;
$settings = json_decode($argv[2], true);
$mail = new PHPMailer(true);
$mail->isSMTP();
$mail->Host = '127.0.0.1';
$mail->Port = $settings['port'];
$mail->SMTPSecure = PHPMailer::ENCRYPTION_STARTTLS;
$mail->SMTPAuth = true;
$mail->Username = 'shop';
$mail->Password = $settings['password'];
$mail->Timeout = 30;
$mail->SMTPOptions = ['ssl' => [
    'cafile' => $settings['ca'],
    'verify_peer' => true,
    'verify_peer_name' => true,
    'allow_self_signed' => false,
]];
$mail->SMTPDebug = 2;  // the conversation, on stderr, for the failure message
$mail->Debugoutput = function ($line, $level) { fwrite(STDERR, $line); };
$mail->setFrom($settings['sender'], 'Shop');
$mail->addAddress($settings['recipient']);
$mail->Subject = 'from PHPMailer';
$mail->Body = $settings['text'];
try {
    $mail->send();
} catch (Exception $e) {
    fwrite(STDERR, 'PHPMailer: ' . $mail->ErrorInfo . "\\n");
    exit(1);
}
"""


@pytest.fixture
def php() -> str:
    path = shutil.which("php")
    if path is None:
        pytest.skip("php is not installed (Debian package php-cli)")
    if not PHPMAILER_AUTOLOAD.exists():
        pytest.skip("PHPMailer is not installed (Debian package libphp-phpmailer)")
    return path


async def test_phpmailer(php: str, relay: Setup) -> None:
    marker = "phpmailer body 2a96"
    script = relay.tmp_path / "send.php"
    script.write_text(PHPMAILER_SCRIPT)
    settings = {
        "port": relay.port,
        "password": SITE_PASSWORD,
        "ca": str(relay.ca_file),
        "sender": SENDER,
        "recipient": RECIPIENT,
        "text": body_text(marker),
    }
    await run_client(relay, [php, str(script), str(PHPMAILER_AUTOLOAD), json.dumps(settings)])
    await assert_delivered(relay, marker)
