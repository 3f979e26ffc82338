"""Policy hooks without a server: what a hook's answer may be, routes it narrows, loading."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.config import ConfigError, load_config
from relay.config_policy import PolicyConfig
from relay.core.headers import split_message
from relay.core.model import SmtpReply, Strategy, Upstream, UpstreamKind
from relay.core.policy import Accept, Reject, TempFail
from relay.core.policy_hooks import (
    AddHeaders,
    HookError,
    MailFacts,
    RecentBounces,
    RouteChoice,
    apply_choice,
    check_data_answer,
    check_verdict,
    header_pairs,
    route_facts,
    route_kept,
)
from relay.core.routing import Route, Skip
from relay.policy_hooks_controller import PolicyLoadError, load_policy
from tests.conftest import base_config, write_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# -- Verdicts


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (None, Accept()),
        (Accept(), Accept()),
        (Reject(SmtpReply(550, "5.7.1 No")), Reject(SmtpReply(550, "5.7.1 No"))),
        (TempFail(SmtpReply(451, "4.7.1 Later")), TempFail(SmtpReply(451, "4.7.1 Later"))),
    ],
)
def test_usable_verdicts(answer: object, expected: object) -> None:
    assert check_verdict(answer) == expected


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (True, "returned bool, not Accept, Reject or TempFail"),
        ("550 no", "returned str"),
        (Reject(SmtpReply(451, "4.7.1 soft")), "Reject needs a 5xx code, not 451"),
        (TempFail(SmtpReply(550, "5.7.1 hard")), "TempFail needs a 4xx code, not 550"),
        (Reject(SmtpReply(250, "2.0.0 ok")), "Reject needs a 5xx code"),
        (Reject(SmtpReply(550, "5.7.1 two\r\n250 lines")), "one printable ASCII line"),
        (Reject(SmtpReply(550, "5.7.1 caf\u00e9")), "one printable ASCII line"),
        (Reject(SmtpReply(550, "x" * 401)), "at most 400 characters"),
        (Reject("550 no"), "not an SmtpReply"),  # type: ignore[arg-type]
    ],
)
def test_unusable_verdicts_are_the_hooks_failure(answer: object, problem: str) -> None:
    with pytest.raises(HookError, match=problem.replace("(", r"\(")):
        check_verdict(answer)


# -- on_data's headers


def test_added_headers_become_fields() -> None:
    fields = check_data_answer(AddHeaders([("X-Policy", "ok\tfine"), ("X-Two", "")]), "X-Class")
    assert isinstance(fields, tuple)
    assert [f.raw for f in fields] == [b"X-Policy: ok\tfine\r\n", b"X-Two: \r\n"]


def test_a_plain_verdict_passes_through_on_data() -> None:
    assert check_data_answer(None, "X-Class") == Accept()
    reject = Reject(SmtpReply(554, "5.7.1 no"))
    assert check_data_answer(reject, "X-Class") == reject


@pytest.mark.parametrize(
    ("pair", "problem"),
    [
        (("From", "evil@example.com"), "From is the relay's own header"),
        (("dkim-signature", "v=1"), "dkim-signature is the relay's own header"),
        (("Received", "from x"), "Received is the relay's own"),
        (("X-Class", "bulk"), "X-Class is the relay's own"),  # the class header, read at ingress
        (("X-Ok", "a\r\nBcc: someone@example.com"), "printable ASCII without CR, LF or NUL"),
        (("X-Ok", "a\nb"), "without CR, LF"),
        (("X-Ok", "a\x00b"), "NUL"),
        (("X-Ok", "caf\u00e9"), "RFC 2047"),
        (("X Bad", "v"), "not a header field name"),
        (("X:Bad", "v"), "not a header field name"),
        (("", "v"), "not a header field name"),
        (("X-Long", "v" * 991), "longer than 998"),
        (("only-a-name",), "takes \\(name, value\\) pairs"),
        ((b"X-Bytes", "v"), "not a header field name"),
    ],
)
def test_unusable_additions_are_the_hooks_failure(pair: Any, problem: str) -> None:
    with pytest.raises(HookError, match=problem):
        check_data_answer(AddHeaders([pair]), "X-Class")


def test_additions_not_a_list() -> None:
    with pytest.raises(HookError, match="a list of"):
        check_data_answer(AddHeaders(5), "X-Class")  # type: ignore[arg-type]


def test_additions_are_bounded() -> None:
    with pytest.raises(HookError, match="at most 20"):
        check_data_answer(AddHeaders([(f"X-{i}", "v") for i in range(21)]), "X-Class")


def test_header_pairs_are_unfolded_text() -> None:
    fields, _ = split_message(b"Subject: a\r\n b\r\nX-Y: caf\xc3\xa9\r\n\r\nbody")
    assert header_pairs(fields) == (("Subject", "a b"), ("X-Y", "caf\u00e9"))


# -- on_route


def upstream(name: str, cost: float | None = None) -> Upstream:
    return Upstream(name, UpstreamKind.SMTP, host="127.0.0.1", port=25, cost_per_1000=cost)


ROUTE = Route(
    (upstream("a", 1.0), upstream("b"), upstream("c", 0.1)),
    (Skip("d", "inactive"),),
    Strategy.PRIORITY,
)


def test_keep_reorder_drop() -> None:
    assert apply_choice(ROUTE, None) is ROUTE
    assert apply_choice(ROUTE, Accept()) is ROUTE
    reordered = apply_choice(ROUTE, RouteChoice(["c", "a", "b"], "cheapest"))
    assert [u.name for u in reordered.upstreams] == ["c", "a", "b"]
    assert reordered.explain() == "priority: try c, a, b; skipped d: inactive; policy: cheapest"
    narrowed = apply_choice(ROUTE, RouteChoice(("b", "b", "d", "zz")))
    assert [u.name for u in narrowed.upstreams] == ["b"]
    assert narrowed.explain() == (
        "priority: try b; skipped d: inactive; a: dropped by policy; c: dropped by policy; "
        "policy: narrowed (ignored, not candidates: d, zz)"
    )
    assert narrowed.available_at is None  # dropped by policy: waiting does not bring them back
    nothing = apply_choice(ROUTE, RouteChoice([], "none today"))
    assert nothing.upstreams == ()
    same = apply_choice(ROUTE, RouteChoice(["a", "b", "c"], "gr\u00fcn\x00\n ok"))
    assert same.upstreams == ROUTE.upstreams and same.policy == "gr\u00fcn  ok"
    assert apply_choice(ROUTE, RouteChoice(["a", "b", "c"])).policy == "same order"


@pytest.mark.parametrize(
    "answer",
    [
        RouteChoice("abc"),
        RouteChoice([1, 2]),
        RouteChoice(3),  # type: ignore[arg-type]
        ["a"],
        Reject(SmtpReply(550, "5.0.0 x")),
    ],
)
def test_unusable_routes_are_the_hooks_failure(answer: Any) -> None:
    with pytest.raises(HookError):
        apply_choice(ROUTE, answer)


def test_a_failed_route_is_kept_and_says_so() -> None:
    kept = route_kept(ROUTE, "timeout")
    assert kept.upstreams == ROUTE.upstreams
    assert kept.explain().endswith("; policy: on_route failed (timeout); the relay's route kept")


def test_route_facts_carry_cost_and_recent_bounces_of_the_recipients_domains() -> None:
    bounces = RecentBounces()
    bounces.note("c", "x@Bounce.Example", 100.0)
    bounces.note("c", "y@elsewhere.example", 101.0)
    facts = route_facts("m1", "shop", ["z@bounce.example"], "bulk", ROUTE, bounces, 200.0)
    assert [(u.name, u.cost_per_1000, dict(u.bounced)) for u in facts.upstreams] == [
        ("a", 1.0, {}),
        ("b", None, {}),
        ("c", 0.1, {"bounce.example": 100.0}),
    ]
    assert (facts.message_class, facts.strategy, facts.now) == ("bulk", "priority", 200.0)


def test_recent_bounces_are_bounded_in_time_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    bounces = RecentBounces()
    monkeypatch.setattr(RecentBounces, "MAX_ENTRIES", 3)
    for i in range(5):
        bounces.note("u", f"x@d{i}.example", 1000.0 + i)
    assert bounces.last("u", [f"d{i}.example" for i in range(5)]) == {
        "d2.example": 1002.0,
        "d3.example": 1003.0,
        "d4.example": 1004.0,
    }
    bounces.note("u", "x@late.example", 1003.0 + RecentBounces.WINDOW_SECONDS + 0.5)
    assert set(bounces.last("u", ["d3.example", "d4.example", "late.example"])) == {
        "d4.example",
        "late.example",
    }


# -- Loading


def test_a_file_is_loaded_fresh_each_time(tmp_path: Path) -> None:
    path = tmp_path / "p.py"
    path.write_text("def on_mail(facts):\n    return 'one'\n")
    first = load_policy(PolicyConfig(str(path)))
    path.write_text("def on_mail(facts):\n    return 'two'\n")  # same size, same second
    second = load_policy(PolicyConfig(str(path)))
    assert first.hooks["on_mail"](None) == "one"  # the old module object is untouched
    assert second.hooks["on_mail"](None) == "two"
    assert second.is_async == {"on_mail": False}


def test_an_importable_module_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "named_policy_for_test.py").write_text(
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Note:\n    text: str\n"
        "async def on_route(facts):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "named_policy_for_test", raising=False)
    loaded = load_policy(PolicyConfig("named_policy_for_test", 1.5))
    assert loaded.is_async == {"on_route": True}
    assert loaded.timeout_seconds == 1.5


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("x = 1\n", "defines none of on_connect, on_mail, on_rcpt, on_data, on_route"),
        ("on_mail = 3\n", "on_mail is not a function"),
        ("raise RuntimeError('no config')\n", "RuntimeError: no config"),
        ("def on_mail(:\n", "SyntaxError"),
    ],
)
def test_modules_that_cannot_serve(tmp_path: Path, source: str, problem: str) -> None:
    path = tmp_path / "p.py"
    path.write_text(source)
    with pytest.raises(PolicyLoadError, match=problem):
        load_policy(PolicyConfig(str(path)))


def test_an_unknown_module_name() -> None:
    with pytest.raises(PolicyLoadError, match="no module named no_such_policy_module"):
        load_policy(PolicyConfig("no_such_policy_module"))


# -- The quiet-hours example's clock


@pytest.mark.parametrize(
    ("hours", "quiet", "loud"),
    [("22-7", [22, 23, 0, 6], [7, 12, 21]), ("9-17", [9, 16], [8, 17, 23]), ("0-24", [0, 23], [])],
)
def test_quiet_hours_window(
    hours: str, quiet: list[int], loud: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIET_HOURS", hours)
    spec = importlib.util.spec_from_file_location("quiet", EXAMPLES / "policy_quiet_hours.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert [module.is_quiet(h) for h in quiet] == [True] * len(quiet)
    assert [module.is_quiet(h) for h in loud] == [False] * len(loud)


# -- The policy: section


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"module": "missing_dir/p.py"}, "policy.module: no such file: missing_dir/p.py"),
        ({"module": "not a-name"}, "policy.module: not a module name"),
        ({"module": "p", "timeout_seconds": 61}, "policy.timeout_seconds: must be at most 60"),
        ({"module": "p", "timeout_seconds": 0}, "policy.timeout_seconds: must be a positive"),
        ({"module": "p", "timout_seconds": 1}, "policy.timout_seconds: unknown key"),
        ({}, "policy.module: is required"),
    ],
)
def test_policy_section_problems(tmp_path: Path, section: dict[str, Any], problem: str) -> None:
    config = base_config(tmp_path, [], policy=section)
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, config))
    assert any(p.startswith(problem) for p in error.value.problems), error.value.problems


def test_policy_section(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, base_config(tmp_path, []))).policy is None
    config = base_config(tmp_path, [], policy={"module": "pkg.site_policy"})
    policy = load_config(write_config(tmp_path, config)).policy
    assert policy == PolicyConfig("pkg.site_policy", 2.0)
    assert policy.path is None


def test_readme_example_module_runs(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Policy hooks\n") :]
    source = section.split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme_policy.py"
    path.write_text(source)
    on_mail = load_policy(PolicyConfig(str(path))).hooks["on_mail"]
    facts = MailFacts("shop", "test@shop.example.com", "shop", "127.0.0.1", "submission", "h")
    assert check_verdict(on_mail(facts)) == Reject(
        SmtpReply(550, "5.7.1 Test senders may not send")
    )
    assert check_verdict(on_mail(replace(facts, sender="orders@shop.example.com"))) == Accept()
