import time

import pytest

from relay.core import templates
from relay.core.compose import Rendered
from relay.core.templates import Template, check_template, render


def _text(source: str, **variables: object) -> str | list[str]:
    """The rendered text part, or the problems."""
    result = render(Template("t", text=source), variables)
    return result.text or "" if isinstance(result, Rendered) else result


def test_variables_and_nested_form_data() -> None:
    t = Template(
        "inquiry",
        subject="Inquiry from {{ formData.name }}",
        text="Hello {{ first_name }},\n{{ formData.message }}\n",
        html="<p>{{ formData['message'] }}</p>",
    )
    variables = {"first_name": "Ada", "formData": {"name": "Bob", "message": "Call me"}}
    assert check_template(t) == []
    assert render(t, variables) == Rendered(
        subject="Inquiry from Bob", text="Hello Ada,\nCall me\n", html="<p>Call me</p>"
    )


def test_only_html_is_escaped() -> None:
    t = Template("t", subject="{{ x }}", text="{{ x }}", html="<b>{{ x }}</b>")
    assert render(t, {"x": "<script>&"}) == Rendered(
        subject="<script>&", text="<script>&", html="<b>&lt;script&gt;&amp;</b>"
    )


def test_absent_parts_render_as_none() -> None:
    assert render(Template("t", html="<p>hi</p>"), {}) == Rendered(None, None, "<p>hi</p>")


def test_the_subject_is_one_line() -> None:
    t = Template("t", subject="New\r\n  inquiry: {{ x }}\n", text="body")
    result = render(t, {"x": "a\r\nBcc: evil@example.com\x00\x85end"})
    assert isinstance(result, Rendered)
    assert result.subject == "New inquiry: a Bcc: evil@example.com end"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ self.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ range.__globals__ }}",
        "{{ config }}",
        "{{ request }}",
        "{{ obj._private }}",
        "{{ obj['_private'] }}",
        "{{ '{0.__class__.__mro__}'.format(obj) }}",
        "{{ '{0._private}'.format(obj) }}",
        "{{ '{x.__class__}'.format_map({'x': obj}) }}",
        "{{ dict.mro() }}",
        "{{ data.update({'a': 1}) }}",
        "{{ items.append(1) }}",
        "{% include 'other' %}",
        "{% import 'other' as o %}",
    ],
)
def test_sandbox_escapes_are_problems(source: str) -> None:
    class Secret:
        _private = "the secret"

    result = _text(source, obj=Secret(), data={}, items=[])
    assert isinstance(result, list) and len(result) == 1
    assert result[0].startswith("text: line 1: ")
    assert "the secret" not in result[0]


def test_syntax_errors_name_the_part_and_line() -> None:
    t = Template("t", subject="{% if %}", text="fine", html="<p>\n\n{{ x }\n</p>")
    assert check_template(t) == [
        "subject: line 1: Expected an expression, got 'end of statement block'",
        "html: line 3: unexpected '}'",
    ]
    assert render(t, {"x": 1}) == check_template(t)


def test_unknown_filters_and_loading_tags_are_found_at_save_time() -> None:
    t = Template("t", text="{{ x|no_such_filter }}", html="\n{% extends 'base' %}")
    assert check_template(t) == [
        "text: line 1: No filter named 'no_such_filter'.",
        "html: line 2: include, extends and import are not available",
    ]


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        (Template("Inquiry", text="x"), "name: "),
        (Template("-x", text="x"), "name: "),
        (Template("a" * 65, text="x"), "name: "),
        (Template("t", subject="only a subject"), "text: a template needs a text or an html part"),
        (Template("t", text="", html=""), "text: a template needs a text or an html part"),
        (Template("t", text="x" * 101), "text: longer than 100 characters"),
    ],
)
def test_check_template_problems(template: Template, problem: str) -> None:
    problems = check_template(template, max_chars=100)
    assert len(problems) == 1 and problems[0].startswith(problem)


def test_every_problem_is_listed() -> None:
    t = Template("Bad Name", subject="{{", text="x" * 101, html="{% endfor %}")
    assert [p.split(":")[0] for p in check_template(t, max_chars=100)] == [
        "name",
        "subject",
        "text",
        "html",
    ]


def test_undefined_variables_are_problems_unless_defaulted() -> None:
    assert _text("a\nb\n{{ missing }}") == ["text: line 3: 'missing' is undefined"]
    assert _text("{{ formData.company }}", formData={}) == [
        "text: line 1: 'dict object' has no attribute 'company'"
    ]
    assert _text("[{{ formData.company | default('') }}]", formData={}) == "[]"
    assert _text("{% if company is defined %}{{ company }}{% endif %}.") == "."


def test_runtime_errors_are_problems() -> None:
    assert _text("{{ 1 / 0 }}") == ["text: line 1: division by zero"]
    problems = _text("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")
    assert isinstance(problems, list) and len(problems) == 1
    assert problems[0].startswith("text: line 1: maximum recursion depth exceeded")


def test_ordinary_expressions_still_work() -> None:
    source = (
        "{{ [1] * 3 }} {{ 3 * 4 }} {{ 2 ** 10 }} {{ 'a' ~ 'b' + 'c' }} {{ '%s=%d%%' % ('x', 5) }}"
        " {{ '%(n)s:%(n)03d'|format(n=7) }} {{ '%05.1f'|format(2.25) }}"
        " {{ '{:>4}'.format(7) }} {{ 'x'|center(5) }}|"
        "{{ range(3)|join(',') }} {{ 'ab'|upper }} {{ 17 % 5 }}"
    )
    assert _text(source) == "[1, 1, 1] 12 1024 abc x=5% 7:007 002.2    7   x  |0,1,2 AB 2"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ [0] * 10**9 }}",
        "{{ 10**9 * 'x' }}",
        "{{ 9 ** 999999 }}",
        "{{ (2 ** 10000) * (2 ** 10000) }}",
        "{{ 'x'.center(10**9) }}",
        "{{ 'x'.zfill(1000000000) }}",
        "{{ 'x'|center(1000000000) }}",
        "{{ 'x'|indent(width=10**9) }}",
        "{{ '%999999999s' % 'x' }}",
        "{{ '%.999999999f' % 1 }}",
        "{{ '%*s' % (10**9, 'x') }}",
        "{{ '%(a)999999999s' % {'a': 'x'} }}",
        "{{ '%(a(b)c)999999999s' % {'a(b)c': 'x'} }}",
        "{{ '%999999999s'|format('x') }}",
        "{{ '{:999999999}'.format('x') }}",
        "{{ '{:>{w}}'.format('x', w=10**9) }}",
        "{{ '{:>{w}}'.format('x', w=10) }}",
        "{{ [1, 2]|batch(10**9, 'x')|list }}",
        "{{ range(10**6)|list }}",
        "{% set s = 'x' * 1000 %}" + "{% set s = s ~ s %}" * 30 + "{{ s|length }}",
        "{% set s = 'x' * 1000 %}" + "{% set s = s + s %}" * 30 + "{{ s|length }}",
        "{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s|length }}{% endmacro %}{{ f('x', 40) }}",
        "{% for i in range(100000) %}{{ 'x' * 20 }}{% endfor %}",
    ],
)
def test_hostile_templates_are_refused_quickly(source: str) -> None:
    started = time.monotonic()
    problems = _text(source)
    assert isinstance(problems, list) and len(problems) == 1
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "source",
    [
        "{{ ('%(' * 400000) % {} }}",
        "{{ ('%(a' ~ ' ' * 100 ~ ')' * 100) * 5000 % {} }}",
        "{{ ('{:' * 400000).format() }}",
        "{{ ('{' ~ ':' * 800000 ~ '}').format(1) }}",
    ],
)
def test_format_checks_cost_linear_time(source: str) -> None:
    started = time.monotonic()
    assert isinstance(_text(source), list)
    assert time.monotonic() - started < 2


def test_output_is_cut_at_the_bound() -> None:
    t = Template("t", text="{% for i in range(1000) %}0123456789{% endfor %}")
    assert render(t, {}, max_output_chars=9_999) == ["text: output longer than 9999 characters"]
    assert isinstance(render(t, {}, max_output_chars=10_000), Rendered)


def test_saving_never_evaluates_expressions() -> None:
    started = time.monotonic()
    assert (
        check_template(Template("t", text="{{ 'x' * 10**10 }}{{ 'y'|center(10000000000) }}")) == []
    )
    problems = check_template(Template("t", text="{{" + "(" * 5000 + "1" + ")" * 5000 + "}}"))
    assert len(problems) == 1 and problems[0].startswith("text: ")
    assert time.monotonic() - started < 2


def test_the_same_template_renders_the_same_output_from_the_cache() -> None:
    t = Template("t", text="{{ n }} {{ range(3)|sum }}", html="<i>{{ n }}</i>")
    first = render(t, {"n": 1})
    hits = templates._compile.cache_info().hits
    assert render(t, {"n": 1}) == first == Rendered(None, "1 3", "<i>1</i>")
    assert templates._compile.cache_info().hits == hits + 2
    assert render(Template("other-name", text=t.text), {"n": 2}) == Rendered(None, "2 3", None)


def test_big_numbers_as_data_are_fine() -> None:
    source = (
        "{{ '{}'.format(ts) }} {{ '%d'|format(ts) }} {{ '%d' % ts }} {{ ts|filesizeformat }}"
        " {% macro m(n) %}{{ n }}{% endmacro %}{{ m(ts) }} {{ '{:,}'.format(ts) }}"
    )
    assert _text(source, ts=1_700_000_000) == (
        "1700000000 1700000000 1700000000 1.7 GB 1700000000 1,700,000,000"
    )


class StepClock:
    """A clock that moves one second each time it is read: a deadline passes after n looks."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(10**5) if i < 0 %}{% endfor %}",
        "{% macro m(n) %}{% if n %}{{ m(n-1) }}{{ m(n-1) }}{% endif %}{% endmacro %}{{ m(40) }}",
        "{% set s = 'x' * 10 %}" + "{{ s|upper|length }}" * 1000,
        "{% for i in range(3) recursive %}{{ loop(range(3)) }}{% endfor %}",
    ],
)
def test_a_deadline_stops_a_render_that_loops_calls_or_filters_past_it(source: str) -> None:
    deadline = templates.Deadline.after(100, StepClock())
    started = time.monotonic()
    assert render(Template("t", text=source), {}, deadline=deadline) == [
        "text: line 1: template took too long (over 100 s)"
    ]
    assert time.monotonic() - started < 2


def test_the_deadline_is_real_time() -> None:
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    deadline = templates.Deadline.after(0.2, time.monotonic)
    assert render(Template("t", text=source), {}, deadline=deadline) == [
        "text: line 1: template took too long (over 0.2 s)"
    ]
    assert 0.2 <= time.monotonic() - started < 1.5


def test_loops_keep_their_meaning_under_the_guard() -> None:
    source = (
        "{% for x in items %}{{ loop.index }}/{{ loop.length }}{{ '' if loop.last else ',' }}"
        "{% else %}none{% endfor %} {% for x in [] %}x{% else %}empty{% endfor %}"
        " {% for k, v in d|dictsort %}{{ k }}={{ v }}{% endfor %}"
    )
    deadline = templates.Deadline.after(10, time.monotonic)
    variables = {"items": ["a", "b", "c"], "d": {"b": 2, "a": 1}}
    expected = "1/3,2/3,3/3 empty a=1b=2"
    assert _text(source, **variables) == expected
    result = render(Template("t", text=source), variables, deadline=deadline)
    assert isinstance(result, Rendered) and result.text == expected


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("{{ ''.__class__ }}", "__class__"),
        ("{{ x['__globals__'] }}", "__globals__"),
        ("{{ x|attr('__init__') }}", "__init__"),
        ("\n{{ cycler.__init__.__globals__ }}", "__globals__"),
    ],
)
def test_names_starting_with_two_underscores_are_refused_at_save_time(
    source: str, name: str
) -> None:
    line = source.count("\n") + 1
    assert check_template(Template("t", text=source)) == [
        f"text: line {line}: '{name}': names starting with __ are refused"
    ]


def test_one_underscore_names_of_form_data_stay_reachable() -> None:
    form = {"_gotcha": "", "_next": "/thanks"}
    assert _text("{{ f._next }}{{ f['_gotcha'] }}.", f=form) == "/thanks."
