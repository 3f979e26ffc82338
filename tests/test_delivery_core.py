"""Delivery decisions without I/O: classify, backoff, throttle, routing, status, ids, passwords."""

from __future__ import annotations

import random
import re
from zoneinfo import ZoneInfo

import pytest

from relay.core.backoff import BackoffPolicy
from relay.core.classify import (
    Outcome,
    RecipientOutcome,
    Stage,
    TransactionResult,
    classify,
)
from relay.core.directory import Directory
from relay.core.health import HealthPolicy
from relay.core.ids import new_message_id
from relay.core.model import (
    MessageClass,
    MessageStatus,
    RecipientStatus,
    Site,
    SmtpReply,
    Upstream,
    UpstreamKind,
)
from relay.core.outcome import message_status
from relay.core.passwords import hash_password, is_password_hash, verify_password
from relay.core.quota import UsageBook
from relay.core.routing import Conditions, Route, RoutingPolicy, choose_route
from relay.core.throttle import FailureThrottle

SENT, RETRY, FAILED = Outcome.SENT, Outcome.RETRY, Outcome.FAILED
OK = SmtpReply(250, "2.1.5 OK")
QUEUED = SmtpReply(250, "2.0.0 Ok: queued as ABC")
R = ["a@example.com", "b@example.com", "c@example.com"]


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible test schedules, not cryptography


def outcomes(result: TransactionResult, recipients: list[str] = R) -> dict[str, Outcome]:
    return {r: o.outcome for r, o in classify(result, recipients).items()}


# -- classify

CLASSIFY_CASES = [
    # Transport errors: nothing to judge, try elsewhere.
    pytest.param(
        TransactionResult(Stage.CONNECT, transport_error="connection refused"),
        dict.fromkeys(R, RETRY),
        id="connect-refused",
    ),
    pytest.param(
        TransactionResult(Stage.TLS, transport_error="certificate verify failed"),
        dict.fromkeys(R, RETRY),
        id="tls-error",
    ),
    pytest.param(
        TransactionResult(Stage.MAIL, transport_error="connection reset"),
        dict.fromkeys(R, RETRY),
        id="reset-at-mail",
    ),
    pytest.param(
        TransactionResult(Stage.DATA, None, dict.fromkeys(R, OK), "timeout after 60 s"),
        dict.fromkeys(R, RETRY),
        id="timeout-at-data",
    ),
    # Replies before MAIL say the upstream is unusable, even a 5xx.
    pytest.param(
        TransactionResult(Stage.CONNECT, SmtpReply(554, "5.3.2 no service")),
        dict.fromkeys(R, RETRY),
        id="greeting-554",
    ),
    pytest.param(
        TransactionResult(Stage.CONNECT, SmtpReply(421, "4.3.2 busy")),
        dict.fromkeys(R, RETRY),
        id="greeting-421",
    ),
    pytest.param(
        TransactionResult(Stage.TLS, SmtpReply(554, "5.7.3 STARTTLS not available")),
        dict.fromkeys(R, RETRY),
        id="starttls-554",
    ),
    pytest.param(
        TransactionResult(Stage.AUTH, SmtpReply(535, "5.7.8 bad credentials")),
        dict.fromkeys(R, RETRY),
        id="auth-535",
    ),
    pytest.param(
        TransactionResult(Stage.AUTH, SmtpReply(454, "4.7.0 try later")),
        dict.fromkeys(R, RETRY),
        id="auth-454",
    ),
    # MAIL: 4xx retry, 5xx fails everyone.
    pytest.param(
        TransactionResult(Stage.MAIL, SmtpReply(451, "4.7.1 rate limited")),
        dict.fromkeys(R, RETRY),
        id="mail-451",
    ),
    pytest.param(
        TransactionResult(Stage.MAIL, SmtpReply(421, "4.4.2 closing")),
        dict.fromkeys(R, RETRY),
        id="mail-421",
    ),
    pytest.param(
        TransactionResult(Stage.MAIL, SmtpReply(550, "5.7.1 sender rejected")),
        dict.fromkeys(R, FAILED),
        id="mail-550",
    ),
    pytest.param(
        TransactionResult(Stage.MAIL, SmtpReply(553, "5.1.8 bad sender domain")),
        dict.fromkeys(R, FAILED),
        id="mail-553",
    ),
    # RCPT mixes with a successful DATA: only the accepted recipients are sent.
    pytest.param(
        TransactionResult(
            Stage.DATA,
            QUEUED,
            {
                R[0]: OK,
                R[1]: SmtpReply(450, "4.2.1 mailbox busy"),
                R[2]: SmtpReply(550, "5.1.1 no such user"),
            },
        ),
        {R[0]: SENT, R[1]: Outcome.DEFER, R[2]: FAILED},
        id="rcpt-250-450-550-data-250",
    ),
    pytest.param(
        TransactionResult(Stage.DATA, QUEUED, dict.fromkeys(R, OK)),
        dict.fromkeys(R, SENT),
        id="all-accepted-data-250",
    ),
    pytest.param(
        TransactionResult(
            Stage.DATA, QUEUED, {R[0]: SmtpReply(251, "2.1.5 will forward"), R[1]: OK, R[2]: OK}
        ),
        dict.fromkeys(R, SENT),
        id="rcpt-251-counts-as-accepted",
    ),
    # RCPT refused for everyone: the client stops before DATA.
    pytest.param(
        TransactionResult(
            Stage.RCPT,
            SmtpReply(550, "5.1.1 no such user"),
            {
                R[0]: SmtpReply(450, "4.7.1 try later"),
                R[1]: SmtpReply(452, "4.5.3 too many"),
                R[2]: SmtpReply(550, "5.1.1 no such user"),
            },
        ),
        {R[0]: RETRY, R[1]: RETRY, R[2]: FAILED},
        id="rcpt-all-refused",
    ),
    # DATA refused: applies to the recipients accepted at RCPT only.
    pytest.param(
        TransactionResult(
            Stage.DATA,
            SmtpReply(452, "4.3.1 insufficient storage"),
            {R[0]: OK, R[1]: OK, R[2]: SmtpReply(550, "5.1.1 no such user")},
        ),
        {R[0]: RETRY, R[1]: RETRY, R[2]: FAILED},
        id="data-452",
    ),
    pytest.param(
        TransactionResult(
            Stage.DATA,
            SmtpReply(552, "5.3.4 message too big"),
            {R[0]: OK, R[1]: SmtpReply(450, "4.7.1 try later"), R[2]: OK},
        ),
        {R[0]: FAILED, R[1]: RETRY, R[2]: FAILED},
        id="data-552",
    ),
    pytest.param(
        TransactionResult(Stage.DATA, SmtpReply(554, "5.7.1 spam"), dict.fromkeys(R, OK)),
        dict.fromkeys(R, FAILED),
        id="data-554",
    ),
    # Accepted at RCPT but the transaction stopped before a DATA reply.
    pytest.param(
        TransactionResult(Stage.RCPT, SmtpReply(421, "4.4.2 closing"), {R[0]: OK, R[1]: OK}),
        dict.fromkeys(R, RETRY),
        id="rcpt-accepted-then-421",
    ),
    pytest.param(
        TransactionResult(Stage.RCPT, None, {R[0]: OK}, "connection reset"),
        dict.fromkeys(R, RETRY),
        id="rcpt-accepted-then-reset",
    ),
    pytest.param(
        TransactionResult(Stage.DATA, None, dict.fromkeys(R, OK), "connection reset"),
        dict.fromkeys(R, RETRY),
        id="rcpt-accepted-no-data-reply",
    ),
]


@pytest.mark.parametrize(("result", "expected"), CLASSIFY_CASES)
def test_classify(result: TransactionResult, expected: dict[str, Outcome]) -> None:
    assert outcomes(result) == expected


def test_classify_rcpt_5xx_stays_failed_when_data_gets_no_reply() -> None:
    """A 5xx at RCPT is that recipient's final answer (DESIGN: "A 5xx for a recipient
    fails that recipient permanently"), even if the connection then drops in DATA."""
    result = TransactionResult(
        Stage.DATA,
        None,
        {R[0]: OK, R[1]: SmtpReply(450, "4.7.1 try later"), R[2]: SmtpReply(550, "5.1.1 no user")},
        "connection reset",
    )
    assert outcomes(result) == {R[0]: RETRY, R[1]: RETRY, R[2]: FAILED}


def test_classify_keeps_the_deciding_reply_and_a_readable_detail() -> None:
    rcpt_550 = SmtpReply(550, "5.1.1 no such user")
    result = TransactionResult(Stage.DATA, QUEUED, {R[0]: OK, R[1]: rcpt_550})
    judged = classify(result, R[:2])
    assert judged[R[0]] == RecipientOutcome(SENT, QUEUED, "data: 250 2.0.0 Ok: queued as ABC")
    assert judged[R[1]] == RecipientOutcome(FAILED, rcpt_550, "rcpt: 550 5.1.1 no such user")
    refused = classify(TransactionResult(Stage.CONNECT, transport_error="refused"), R[:1])
    assert refused[R[0]].detail == "connect: refused"


def test_classify_with_no_recipients_is_empty() -> None:
    assert classify(TransactionResult(Stage.DATA, QUEUED, {}), []) == {}


# -- backoff


@pytest.mark.parametrize("seed", range(20))
def test_backoff_jitter_stays_within_half_ceiling_and_ceiling(seed: int) -> None:
    policy = BackoffPolicy(first_delay=60, max_delay=3600, max_age=86400)
    rng = seeded(seed)
    for attempt in range(1, 15):
        ceiling = min(3600.0, 60.0 * 2 ** (attempt - 1))
        delay = policy.delay(attempt, rng)
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)


def test_backoff_grows_exponentially_until_the_cap() -> None:
    policy = BackoffPolicy(first_delay=10, max_delay=10_000, max_age=86400)
    rng = seeded(1)
    delays = [policy.delay(attempt, rng) for attempt in range(1, 11)]
    # With equal jitter, delay(n) <= ceiling(n) <= delay(n + 1): never shrinks below the cap.
    assert delays == sorted(delays)
    assert 5 <= delays[0] <= 10
    assert 2560 <= delays[9] <= 5120
    assert delays[9] / delays[0] >= 256


@pytest.mark.parametrize("attempt", [11, 20, 31, 100, 10_000])
def test_backoff_is_capped_at_max_delay(attempt: int) -> None:
    policy = BackoffPolicy(first_delay=60, max_delay=3600, max_age=86400)
    rng = seeded(attempt)
    for _ in range(50):
        assert 1800 <= policy.delay(attempt, rng) <= 3600


@pytest.mark.parametrize("attempt", [0, 1, -3])
def test_backoff_first_tries_use_first_delay(attempt: int) -> None:
    policy = BackoffPolicy(first_delay=60, max_delay=3600)
    assert 30 <= policy.delay(attempt, seeded(0)) <= 60


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    policy = BackoffPolicy()
    first = [policy.delay(n, seeded(42)) for n in range(1, 8)]
    again = [policy.delay(n, seeded(42)) for n in range(1, 8)]
    assert first == again
    spread = {policy.delay(3, seeded(seed)) for seed in range(20)}
    assert len(spread) > 1  # jitter actually varies


@pytest.mark.parametrize(
    ("age", "expired"),
    [(0, False), (86399.9, False), (86400, True), (86400.1, True), (10 * 86400, True)],
)
def test_backoff_expiry_at_max_age(age: float, expired: bool) -> None:
    policy = BackoffPolicy(max_age=86400)
    created = 1_700_000_000.0
    assert policy.is_expired(created, created + age) is expired


def test_backoff_default_max_age_is_three_days() -> None:
    assert BackoffPolicy().max_age == 3 * 86400


# -- throttle


def test_throttle_blocks_after_n_failures_within_the_window() -> None:
    throttle = FailureThrottle(max_failures=3, window_seconds=60)
    assert not throttle.is_blocked("ip:192.0.2.1", 0)
    throttle.record_failure("ip:192.0.2.1", 0)
    throttle.record_failure("ip:192.0.2.1", 10)
    assert not throttle.is_blocked("ip:192.0.2.1", 11)
    throttle.record_failure("ip:192.0.2.1", 20)
    assert throttle.is_blocked("ip:192.0.2.1", 21)
    assert not throttle.is_blocked("ip:192.0.2.2", 21)


def test_throttle_window_expiry() -> None:
    throttle = FailureThrottle(max_failures=3, window_seconds=60)
    for now in (0.0, 1.0, 2.0):
        throttle.record_failure("user:shop", now)
    assert throttle.is_blocked("user:shop", 59.9)
    assert not throttle.is_blocked("user:shop", 60.0)  # the failure at 0 is out of the window
    throttle.record_failure("user:shop", 60.5)
    assert throttle.is_blocked("user:shop", 60.9)  # 1, 2 and 60.5 are within the window
    assert not throttle.is_blocked("user:shop", 61.0)  # and now 1 is not
    assert not throttle.is_blocked("user:shop", 200.0)
    throttle.record_failure("user:shop", 201.0)
    assert not throttle.is_blocked("user:shop", 201.0)  # old failures were forgotten


def test_throttle_failures_spread_out_never_block() -> None:
    throttle = FailureThrottle(max_failures=3, window_seconds=60)
    for i in range(100):
        throttle.record_failure("ip:192.0.2.1", i * 31.0)
        assert not throttle.is_blocked("ip:192.0.2.1", i * 31.0)


def test_throttle_key_count_is_bounded() -> None:
    throttle = FailureThrottle(max_failures=1, window_seconds=3600, max_keys=50)
    keys = [f"ip:10.0.{i // 256}.{i % 256}" for i in range(2000)]
    for i, key in enumerate(keys):
        throttle.record_failure(key, float(i))
    # With max_failures=1 every key still remembered is blocked: at most max_keys are.
    remembered = [key for key in keys if throttle.is_blocked(key, 2000.0)]
    assert 0 < len(remembered) <= 50
    assert keys[-1] in remembered  # the newest failure is never the one dropped


def test_throttle_drops_expired_keys_before_live_ones() -> None:
    throttle = FailureThrottle(max_failures=1, window_seconds=60, max_keys=3)
    throttle.record_failure("old", 0)
    throttle.record_failure("a", 50)
    throttle.record_failure("b", 50)
    throttle.record_failure("c", 70)  # full: "old" has expired and makes room
    assert [k for k in ("old", "a", "b", "c") if throttle.is_blocked(k, 70)] == ["a", "b", "c"]


# -- routing


def upstream(name: str, priority: int = 100, active: bool = True) -> Upstream:
    return Upstream(
        name=name, kind=UpstreamKind.SMTP, host=f"{name}.test", priority=priority, active=active
    )


UPSTREAMS = [
    upstream("zeta", priority=2),
    upstream("beta", priority=1),
    upstream("alpha", priority=1),
    upstream("off", priority=0, active=False),
    upstream("gamma", priority=5),
]
ROUTING = Directory.of([], [], UPSTREAMS)


def site_with(upstreams: tuple[str, ...]) -> Site:
    return Site(id="shop", name="Shop", from_email="sales@example.com", upstreams=upstreams)


@pytest.mark.parametrize(
    ("site", "chosen", "skipped"),
    [
        pytest.param(
            site_with(("gamma", "alpha")), ["gamma", "alpha"], set(), id="site-order-not-priority"
        ),
        pytest.param(
            site_with(("zeta", "ghost", "off", "beta")),
            ["zeta", "beta"],
            {("ghost", "unknown upstream"), ("off", "inactive")},
            id="unknown-and-inactive-skipped",
        ),
        pytest.param(
            site_with(("off",)), [], {("off", "inactive")}, id="only-inactive-leaves-nothing"
        ),
        pytest.param(
            site_with(()),
            ["alpha", "beta", "zeta", "gamma"],
            {("off", "inactive")},
            id="empty-list-all-active-by-priority-then-name",
        ),
        pytest.param(
            None,
            ["alpha", "beta", "zeta", "gamma"],
            {("off", "inactive")},
            id="no-site-all-active",
        ),
    ],
)
def test_choose_route(site: Site | None, chosen: list[str], skipped: set[tuple[str, str]]) -> None:
    route = route_for(site, ROUTING)
    assert [u.name for u in route.upstreams] == chosen
    assert {(s.upstream, s.reason) for s in route.skipped} == skipped
    assert len(route.skipped) == len(skipped)


def route_for(site: Site | None, directory: Directory) -> Route:
    conditions = Conditions({}, HealthPolicy(), UsageBook(ZoneInfo("UTC")), now=0.0)
    return choose_route(
        site,
        MessageClass.TRANSACTIONAL,
        directory,
        RoutingPolicy(),
        conditions,
        seeded(1),
    )


def test_choose_route_with_no_upstreams() -> None:
    route = route_for(site_with(()), Directory.of([], [], []))
    assert route.upstreams == ()
    assert route.skipped == ()


# -- message_status

P, S, F = RecipientStatus.PENDING, RecipientStatus.SENT, RecipientStatus.FAILED


@pytest.mark.parametrize(
    ("recipients", "retry", "expected"),
    [
        ([S], False, MessageStatus.SENT),
        ([S, S, S], True, MessageStatus.SENT),
        ([F], False, MessageStatus.FAILED),
        ([F, F], True, MessageStatus.FAILED),
        ([S, F], False, MessageStatus.PARTIAL),
        ([F, S, S], True, MessageStatus.PARTIAL),
        ([P], True, MessageStatus.DEFERRED),
        ([P, S], True, MessageStatus.DEFERRED),
        ([P, F, S], True, MessageStatus.DEFERRED),
        ([P], False, MessageStatus.QUEUED),
        ([S, P], False, MessageStatus.QUEUED),
    ],
)
def test_message_status(
    recipients: list[RecipientStatus], retry: bool, expected: MessageStatus
) -> None:
    assert message_status(recipients, retry=retry) is expected
    assert message_status(iter(recipients), retry=retry) is expected  # any iterable


# -- message ids

ID_ALPHABET = re.compile(r"^[0-9abcdefghjkmnpqrstvwxyz]{26}$")  # Crockford base32, lower case


@pytest.mark.parametrize(
    ("now", "random_bytes"),
    [
        (0.0, bytes(10)),
        (1_700_000_000.123, bytes(range(10))),
        (1_700_000_000.0, b"\xff" * 10),
        (4_000_000_000.0, b"\x80" * 10),
    ],
)
def test_message_id_is_26_chars_of_the_alphabet(now: float, random_bytes: bytes) -> None:
    message_id = new_message_id(now, random_bytes)
    assert len(message_id) == 26
    assert ID_ALPHABET.match(message_id)
    assert new_message_id(now, random_bytes) == message_id  # deterministic


def test_message_ids_sort_by_creation_time() -> None:
    rng = seeded(7)
    times = [1_700_000_000 + i * 0.001 for i in range(0, 5000, 37)] + [1_800_000_000.0]
    ids = [new_message_id(t, rng.randbytes(10)) for t in times]
    assert ids == sorted(ids)
    # Within a millisecond the random part decides; across milliseconds time always wins.
    assert new_message_id(1_700_000_000.01, bytes(10)) > new_message_id(
        1_700_000_000.0, b"\xff" * 10
    )
    assert new_message_id(1.0, b"\x01" + bytes(9)) > new_message_id(1.0, bytes(10))


def test_message_ids_differ_by_random_part() -> None:
    rng = seeded(3)
    ids = {new_message_id(1_700_000_000.0, rng.randbytes(10)) for _ in range(1000)}
    assert len(ids) == 1000


# -- passwords


@pytest.fixture(scope="module")
def stored_hash() -> str:
    return hash_password("correct horse battery staple")


def test_password_round_trip(stored_hash: str) -> None:
    assert is_password_hash(stored_hash)
    assert stored_hash.startswith("$scrypt$ln=15,r=8,p=1$")
    assert verify_password("correct horse battery staple", stored_hash)


@pytest.mark.parametrize(
    "wrong",
    ["", "correct horse battery stapl", "Correct horse battery staple", "correct horse battery "],
)
def test_wrong_password_is_refused(stored_hash: str, wrong: str) -> None:
    assert not verify_password(wrong, stored_hash)


def test_salt_makes_hashes_differ_and_fixed_salt_is_reproducible() -> None:
    a, b = hash_password("pw-ünïcode"), hash_password("pw-ünïcode")
    assert a != b
    assert verify_password("pw-ünïcode", a)
    salted = hash_password("pw", salt=b"0123456789abcdef")
    assert salted == hash_password("pw", salt=b"0123456789abcdef")


@pytest.mark.parametrize(
    "malformed",
    [
        pytest.param("", id="empty"),
        pytest.param("correct horse battery staple", id="plain-text"),
        pytest.param("$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234", id="bcrypt"),
        pytest.param("$scrypt$ln=15,r=8,p=1$c2FsdA==", id="no-digest"),
        pytest.param("$scrypt$ln=15,r=8$c2FsdA==$ZGlnZXN0", id="no-p"),
        pytest.param("$scrypt$ln=15,r=8,p=1$c2FsdA==$ZGlnZXN0\n", id="trailing-newline"),
        pytest.param("$scrypt$ln=15,r=8,p=1$abc$abc", id="bad-base64-padding"),
        pytest.param("$scrypt$ln=0,r=8,p=1$c2FsdA==$ZGlnZXN0", id="n-is-one"),
        pytest.param("$scrypt$ln=10,r=0,p=1$c2FsdA==$ZGlnZXN0", id="r-zero"),
        pytest.param("$scrypt$ln=10,r=8,p=0$c2FsdA==$ZGlnZXN0", id="p-zero"),
        pytest.param("$scrypt$ln=20,r=99,p=99$c2FsdA==$ZGlnZXN0", id="over-memory-limit"),
    ],
)
def test_malformed_hash_verifies_false_without_raising(malformed: str) -> None:
    assert verify_password("correct horse battery staple", malformed) is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "$scrypt$ln=15,r=8,p=1$c2FsdC1mb3ItZGV2LW9ubHk=$0Y5v+477BsvPPaaIQHrveqrlo2jgrdt/CifEI9nIWqw=",
            True,
        ),
        ("$scrypt$ln=10,r=8,p=1$c2FsdA==$ZGlnZXN0", True),
        ("$scrypt$ln=16,r=8,p=1$c2FsdA==$ZGlnZXN0", True),
        ("$scrypt$ln=20,r=8,p=1$c2FsdA==$ZGlnZXN0", False),  # 1 GiB: over the memory cap
        ("$scrypt$ln=9,r=8,p=1$c2FsdA==$ZGlnZXN0", False),
        ("$scrypt$ln=21,r=8,p=1$c2FsdA==$ZGlnZXN0", False),
        ("$scrypt$ln=15,r=8,p=1$c2FsdA==", False),
        ("$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$ZGlnZXN0", False),
        ("", False),
        ("hunter2", False),
    ],
)
def test_is_password_hash(text: str, expected: bool) -> None:
    assert is_password_hash(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("$scrypt$ln=15,r=8,p=1$abc$abc", id="bad-base64-padding"),
        pytest.param("$scrypt$ln=10,r=0,p=1$c2FsdA==$ZGlnZXN0", id="r-zero"),
        pytest.param("$scrypt$ln=10,r=8,p=0$c2FsdA==$ZGlnZXN0", id="p-zero"),
        pytest.param("$scrypt$ln=20,r=99,p=99$c2FsdA==$ZGlnZXN0", id="over-memory-limit"),
    ],
)
def test_is_password_hash_refuses_hashes_that_cannot_be_verified(text: str) -> None:
    """The config accepts what is_password_hash accepts; AUTH then must not crash on it."""
    assert is_password_hash(text) is False


def test_example_config_hash_is_dev_password() -> None:
    example = (
        "$scrypt$ln=15,r=8,p=1$c2FsdC1mb3ItZGV2LW9ubHk="
        "$0Y5v+477BsvPPaaIQHrveqrlo2jgrdt/CifEI9nIWqw="
    )
    assert verify_password("dev-password", example)
