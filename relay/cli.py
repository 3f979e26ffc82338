"""The `relay` command: serve, check-config, hash-password, hash-token, dkim keygen, dns verify.

User mistakes (bad config, port in use, unreadable key) print one clear
line per problem and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from relay import __version__, cli_domains, logs
from relay.config import Config, ConfigError, default_config_path, load_config
from relay.core.passwords import hash_password
from relay.core.tokens import hash_token, new_token
from relay.worker_handoff import Handoff

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relay", description="Self-hosted SMTP relay for many sites."
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the relay (SMTP, delivery, admin HTTP)")
    serve.add_argument(
        "-c", "--config", type=Path, help="config file (default ./config.yaml or $RELAY_CONFIG)"
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--workers",
        type=_positive,
        help="processes serving the same listeners (default: server.workers, else 1)",
    )
    # The supervisor's first step, in a process of its own (relay/supervisor.py).
    serve.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    check = commands.add_parser(
        "check-config", help="validate the config file; exit 2 listing every problem"
    )
    check.add_argument("-c", "--config", type=Path)
    commands.add_parser(
        "hash-password", help="read a password from stdin (or prompt) and print its hash"
    )
    commands.add_parser(
        "hash-token",
        help="print a new admin API token and its token_hash (or hash one read from stdin)",
    )
    dkim = commands.add_parser("dkim", help="DKIM keys").add_subparsers(
        dest="dkim_command", required=True
    )
    keygen = dkim.add_parser("keygen", help="make a key and print the DNS record to publish")
    keygen.add_argument("domain")
    keygen.add_argument("--selector", required=True, help="e.g. relay1; the next key relay2")
    keygen.add_argument("--out", type=Path, help="directory for the key (default ./data/dkim)")
    keygen.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    keygen.add_argument("--owner", help="user that may read the key (the service user)")
    dns = commands.add_parser("dns", help="DNS records of sending domains").add_subparsers(
        dest="dns_command", required=True
    )
    dns_verify = dns.add_parser(
        "verify", help="check a domain's records; exit 0 only if every required one passes"
    )
    dns_verify.add_argument("domain")
    dns_verify.add_argument("-c", "--config", type=Path)
    args = parser.parse_args(argv)

    if args.command == "hash-password":
        return _hash_password()
    if args.command == "hash-token":
        return _hash_token()
    if args.command == "dkim":
        return cli_domains.keygen(args.domain, args.selector, args.out, args.algorithm, args.owner)
    path = args.config or default_config_path()
    if args.command == "check-config":
        return _check_config(path)
    if args.command == "dns":
        return _dns_verify(path, args.domain)
    return _serve(path, args.log_level, args.workers, args.prepare_only)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return value


def _load_or_report(path: Path) -> Config | None:
    """The config, or None with every problem printed on stderr (one line each)."""
    try:
        return load_config(path)
    except ConfigError as error:
        _report(error)
        return None


def _report(error: ConfigError) -> None:
    for problem in error.problems:
        print(problem, file=sys.stderr)


def _dns_verify(path: Path, domain: str) -> int:
    config = _load_or_report(path)
    if config is None:
        return EXIT_CONFIG
    return cli_domains.dns_verify(config, domain)


def _check_config(path: Path) -> int:
    config = _load_or_report(path)
    if config is None:
        return EXIT_CONFIG
    if config.policy is not None:  # imported as `relay serve` will: its code runs
        from relay.policy_hooks_controller import PolicyLoadError, load_policy

        try:
            load_policy(config.policy)
        except PolicyLoadError as error:
            _report(ConfigError([f"policy.module: {error}"]))
            return EXIT_CONFIG
    print(
        f"{path}: OK ({len(config.sites)} sites, {len(config.upstreams)} upstreams, "
        f"{len(config.listeners)} listeners)"
    )
    return 0


def _hash_password() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("an empty password cannot be hashed", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _hash_token() -> int:
    """A terminal gets a new random token; a pipe hashes the token it gives."""
    if sys.stdin.isatty():
        token = new_token()
        print(f"token:      {token}\ntoken_hash: {hash_token(token)}")
        return 0
    token = sys.stdin.readline().strip()
    if len(token) < 16:
        print(
            "a token needs at least 16 characters (run without input for a new one)",
            file=sys.stderr,
        )
        return 1
    print(hash_token(token))
    return 0


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (libuv) where it is installed: about 1.5x the throughput."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _serve(path: Path, log_level: str, workers: int | None, prepare_only: bool) -> int:
    handoff = Handoff.from_env()
    if handoff is None and not prepare_only and workers != 1:
        config = _load_or_report(path)
        if config is None:
            return EXIT_CONFIG
        if (workers or config.server.workers) > 1:
            from relay.supervisor import supervise

            logs.configure(log_level, "supervisor")
            return supervise(path, config, workers or config.server.workers, log_level)
    from relay.app import StartupError, prepare, serve  # the tools need none of the server

    logs.configure(log_level, f"worker-{handoff.index}" if handoff else "")
    try:
        with asyncio.Runner(loop_factory=_fast_loop()) as runner:
            return runner.run(prepare(path) if prepare_only else serve(path, handoff))
    except ConfigError as error:
        _report(error)
        return EXIT_CONFIG
    except StartupError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
