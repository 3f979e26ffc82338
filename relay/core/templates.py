"""Named message templates: checked when saved, rendered in Jinja2's sandbox when a message is sent.

A template has a `subject`, a `text` and an `html` part, each optional, but
text or html must be there. Parts render in Jinja2's
`ImmutableSandboxedEnvironment` (no attribute starting with `_`, no Python
internals, no mutation of lists and dicts, `str.format` sandboxed too); only
`html` is autoescaped. `include`, `extends` and `import` are refused (there is
nothing to load), and so is the `lipsum` global (it builds any amount of text
in one call).

`check_template` compiles every part and lists every problem: the save-time
422. `render` never raises: every error (an undefined variable, a refused
attribute, a Python exception) is a problem ``"<part>: line N: <what>"``.
An undefined variable is an error (`StrictUndefined`): a send that lacks a
variable gets a 422 naming it, not a mail that says "Hello ,"; an optional
variable is written ``{{ x | default('') }}`` or tested with ``is defined``.

What rendering cost is bounded:

- compiling never evaluates an expression (constant folding is off), so a
  save costs time linear in the template's size;
- `range` yields at most 100000 items (the sandbox's MAX_RANGE);
- each part's output stops at `max_output_chars`;
- no single value may grow past MAX_VALUE_CHARS characters (or items) by `*`,
  `+`, `~` or `%`, or as the result of a call or a filter; `int ** int` and
  `int * int` stop at MAX_INT_BITS; a number that sizes a string (an argument
  of a `str` method or of the `center`, `indent`, `batch`, `slice`, `tojson`
  filters, a width in a ``%`` or `str.format` format) stops at MAX_VALUE_CHARS,
  so ``'x'.center(10**9)`` is refused before it allocates. Numbers that are
  data (``'{}'.format(1700000000)``, a macro's argument) are not limited.

- time, when `render` is given a `Deadline`: every loop step, every call (a
  macro, a method, ``loop()``), every filter and every output chunk first
  checks the clock, and past the deadline the render stops with the problem
  "template took too long". So two nested ``range(100000)`` stop at the
  deadline, not after 10**10 silent steps; what may run past it is one
  single operation on bounded values (a `sort` of a million items: under a
  second) and, with no loop or call at all, a template's worth of them;
- names starting with ``__`` are refused when saving (``.__class__``,
  ``['__globals__']``, ``|attr('__init__')``): the sandbox would refuse them
  at render time anyway, and an escape attempt is better a save-time 422.

What is not: memory of one call that multiplies a bounded value by a bounded
count (`join` of 100000 copies of a long string, `replace` with an empty
pattern) before its result is checked. Without a `Deadline`, CPU time is not
bounded either; callers off the event loop pass one
(relay/template_controller.py).
"""

from __future__ import annotations

import functools
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import BuiltinMethodType
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2 import Template as CompiledTemplate
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from relay.core.compose import Rendered

MAX_VALUE_CHARS = 1_000_000
MAX_INT_BITS = 14_000  # about 4300 digits, CPython's limit for printing an int (int_max_str_digits)
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_CONTROL_RUN = re.compile(r"[\x00-\x1f\x7f-\x9f]+")  # C0 (with CR, LF, NUL), DEL, C1
# Format widths. No pattern scans past the next `%`, `)` or brace, so each costs linear time
# on any string: a `%(key)` is not parsed; with one in the format, any `)` may end a key.
_PERCENT_WIDTHS = re.compile(r"%[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")
_KEYED_PERCENT_WIDTHS = re.compile(r"[%)][-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")
_FORMAT_SPEC = re.compile(r"\{[^{}:]*:([^{}]*)\}")
_NESTED_FORMAT_SPEC = re.compile(r"\{[^{}:]*:[^{}]*\{")  # `{:>{width}}`
# The filters whose number arguments size their output (`center(10**9)`, `batch(10**9, 'x')`).
_SIZING_FILTERS = frozenset({"center", "indent", "batch", "slice", "tojson"})
_LOADING = (nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)
_HIDDEN = "__"  # the prefix of Python's internals: refused as a name at save time
# The filter each for loop's iterable goes through (Jinja2 allows no custom node); a template
# cannot name it, as a filter's name in a template is an identifier.
_GUARD = "for-loop guard"


@dataclass(frozen=True)
class Deadline:
    """When a render must stop: ``clock()`` past ``at``; ``seconds`` is the budget it was given."""

    at: float
    seconds: float
    clock: Callable[[], float]

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float]) -> Deadline:
        return cls(clock() + seconds, seconds, clock)


# The deadline of the render running in this thread (a context variable: a render is one
# synchronous call, and another thread's render has its own).
_DEADLINE: ContextVar[Deadline | None] = ContextVar("template_deadline", default=None)


@dataclass(frozen=True)
class Template:
    name: str
    subject: str | None = None
    text: str | None = None
    html: str | None = None


def check_template(t: Template, *, max_chars: int = 100_000) -> list[str]:
    """Every problem with ``t``, as the save-time 422 lists them; empty when it may be saved."""
    problems = []
    if not _NAME.fullmatch(t.name):
        problems.append("name: 1 to 64 of a-z, 0-9, _ and -, starting with a letter or digit")
    if not t.text and not t.html:
        problems.append("text: a template needs a text or an html part")
    for part, source in _parts(t):
        if len(source) > max_chars:
            problems.append(f"{part}: longer than {max_chars} characters")
            continue  # not compiled: compiling costs time in the template's size
        compiled = _compile(source, autoescape=part == "html")
        if isinstance(compiled, str):
            problems.append(f"{part}: {compiled}")
    return problems


def render(
    t: Template,
    variables: Mapping[str, object],
    *,
    max_output_chars: int = 1_000_000,
    deadline: Deadline | None = None,
) -> Rendered | list[str]:
    """The rendered parts, or every problem met on the way; never raises.

    With a ``deadline``, a render that passes it stops with the problem
    "template took too long" (see the module docstring for what may run past it).
    """
    token = _DEADLINE.set(deadline)
    try:
        return _render(t, variables, max_output_chars)
    finally:
        _DEADLINE.reset(token)


def _render(
    t: Template, variables: Mapping[str, object], max_output_chars: int
) -> Rendered | list[str]:
    rendered: dict[str, str | None] = {"subject": None, "text": None, "html": None}
    problems = []
    for part, source in _parts(t):
        compiled = _compile(source, autoescape=part == "html")
        if isinstance(compiled, str):
            problems.append(f"{part}: {compiled}")
            continue
        output = _run(compiled, variables, max_output_chars)
        if isinstance(output, str):
            rendered[part] = output
        else:
            problems.append(f"{part}: {output.problem}")
    if problems:
        return problems
    if rendered["subject"] is not None:
        # Collapsed, not refused: a subject line is one header line, and a line break from a
        # multi-line source or a visitor's textarea is no reason to lose the message. Every run
        # of control characters (CR, LF, NUL among them) becomes one space, so no variable can
        # split the header or add one; runs of spaces become one too.
        rendered["subject"] = " ".join(_CONTROL_RUN.sub(" ", rendered["subject"]).split())
    return Rendered(**rendered)


def _parts(t: Template) -> Iterator[tuple[str, str]]:
    for part in ("subject", "text", "html"):
        source = getattr(t, part)
        if source is not None:
            yield part, source


@dataclass(frozen=True)
class _Failed:
    problem: str


def _run(compiled: CompiledTemplate, variables: Mapping[str, object], limit: int) -> str | _Failed:
    chunks: list[str] = []
    length = 0
    try:
        for chunk in compiled.generate(dict(variables)):
            _check_time()
            length += len(chunk)
            if length > limit:
                return _Failed(f"output longer than {limit} characters")
            chunks.append(chunk)
    # Every exception: the sandbox's, an undefined variable, or any Python error a template
    # can cause (ZeroDivisionError, RecursionError, MemoryError...). None may escape a send.
    except Exception as error:
        return _Failed(_describe(error))
    return "".join(chunks)


def _describe(error: Exception) -> str:
    """``line N: message`` with the template's line from Jinja2's rewritten traceback."""
    lines = [
        f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == "<template>"
    ]
    message = str(error)[:200] or type(error).__name__
    return f"line {lines[-1]}: {message}" if lines else message


@functools.lru_cache(maxsize=128)
def _compile(source: str, *, autoescape: bool) -> CompiledTemplate | str:
    """The compiled template, or its problem; cached by content, as compiling costs milliseconds."""
    environment = _ENVIRONMENTS[autoescape]
    try:
        tree = environment.parse(source)
        for node in tree.find_all(_LOADING):
            return f"line {node.lineno}: include, extends and import are not available"
        hidden = _hidden_name(tree)
        if hidden is not None:
            return hidden
        for loop in tree.find_all(nodes.For):  # each step checks the deadline
            loop.iter = nodes.Filter(loop.iter, _GUARD, [], [], None, None, lineno=loop.lineno)
        return environment.from_string(tree)
    except Exception as error:  # TemplateSyntaxError, and RecursionError on deep nesting
        return _describe_syntax(error)


def _hidden_name(tree: nodes.Template) -> str | None:
    """The first constant name starting with ``__`` (attribute, item or `attr` filter), if any."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            name: object = node.attr
        elif isinstance(node, nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, nodes.Const) else None
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            name = node.args[0].value if isinstance(node.args[0], nodes.Const) else None
        else:
            continue
        if isinstance(name, str) and name.startswith(_HIDDEN):
            return f"line {node.lineno}: {name!r}: names starting with __ are refused"
    return None


def _describe_syntax(error: Exception) -> str:
    lineno, message = getattr(error, "lineno", None), getattr(error, "message", None)
    if lineno and message:
        return f"line {lineno}: {message}"
    return f"cannot be compiled: {str(error)[:200] or type(error).__name__}"


class TookTooLong(SecurityError):
    """The render passed its deadline."""


def _check_time() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and deadline.clock() > deadline.at:
        raise TookTooLong(f"template took too long (over {deadline.seconds:g} s)")


def _guard_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """A for loop's items, each after a look at the deadline (this thread's, fixed at the start)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        yield from iterable
        return
    clock, at = deadline.clock, deadline.at
    for item in iterable:
        if clock() > at:
            raise TookTooLong(f"template took too long (over {deadline.seconds:g} s)")
        yield item


def _refuse_long(value: Any) -> Any:
    if isinstance(value, str | list | tuple | dict) and len(value) > MAX_VALUE_CHARS:
        raise SecurityError(f"a value longer than {MAX_VALUE_CHARS} characters or items")
    return value


def _refuse_big_numbers(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and abs(value) > MAX_VALUE_CHARS:
            raise SecurityError(f"a number argument above {MAX_VALUE_CHARS}")


def _refuse_wide_formats(widths: Iterator[str]) -> None:
    for width in widths:
        if width == "*" or (width and (len(width) > 7 or int(width) > MAX_VALUE_CHARS)):
            raise SecurityError(f"a format width above {MAX_VALUE_CHARS} or taken from an argument")


def _percent_widths(text: str) -> Iterator[str]:
    pattern = _KEYED_PERCENT_WIDTHS if "%(" in text else _PERCENT_WIDTHS
    for match in pattern.finditer(text):
        yield from match.groups("")


def _format_widths(text: str) -> Iterator[str]:
    """The widths in `str.format` fields; one taken from an argument counts as ``*``."""
    if _NESTED_FORMAT_SPEC.search(text):
        yield "*"
    for match in _FORMAT_SPEC.finditer(text):
        yield from re.findall(r"\d+", match.group(1))


def _percent(text: Any, values: Any) -> Any:
    if isinstance(text, str):
        _refuse_wide_formats(_percent_widths(text))
    return _refuse_long(text % values)


def _times(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise SecurityError(f"a number above {MAX_INT_BITS} bits")
    elif (
        isinstance(right, int) and hasattr(left, "__len__") and len(left) * right > MAX_VALUE_CHARS
    ):
        raise SecurityError(f"a value longer than {MAX_VALUE_CHARS} characters or items")
    elif isinstance(left, int) and hasattr(right, "__len__"):
        return _times(right, left)
    return left * right


def _power(base: Any, exponent: Any) -> Any:
    ints = isinstance(base, int) and isinstance(exponent, int)
    growing = ints and abs(base) > 1 and exponent > 0
    if growing and base.bit_length() * exponent > MAX_INT_BITS:
        raise SecurityError(f"a number above {MAX_INT_BITS} bits")
    return base**exponent


def _bounded_filter(function: Callable[..., Any], *, sizing: bool) -> Callable[..., Any]:
    # functools.wraps copies `jinja_pass_arg`, which tells the compiler what to pass first.
    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        if sizing:  # the arguments after the context (if passed) and the filtered value
            _refuse_big_numbers(args[2 if hasattr(function, "jinja_pass_arg") else 1 :], kwargs)
        return _refuse_long(function(*args, **kwargs))

    return bounded


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> Any:
    if args and kwargs:
        raise TypeError("format takes positional or keyword arguments, not both")
    return _percent(str(value), kwargs or args)


class _BoundedCodeGenerator(CodeGenerator):
    """Routes `~` (not one of the operators a sandbox can intercept) through the length check."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.refuse_long(")
        super().visit_Concat(node, frame)
        self.write(")")


class _Sandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    refuse_long = staticmethod(_refuse_long)

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            optimized=False,  # constant folding would evaluate `'x' * 10**10` at save time
            keep_trailing_newline=True,  # a text body ends as its author wrote it
        )
        del self.globals["lipsum"]
        self.filters = {
            name: _bounded_filter(f, sizing=name in _SIZING_FILTERS)
            for name, f in self.filters.items()
        }
        self.filters["format"] = _bounded_filter(_format_filter, sizing=False)
        self.filters[_GUARD] = _guard_iter
        self.binop_table.update({"*": _times, "**": _power, "%": _percent})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return _refuse_long(super().call_binop(context, operator, left, right))

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # Raised at once: the sandbox's default is an Undefined that prints as nothing unless
        # StrictUndefined, and a refused attribute should be a problem, whatever is undefined.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} refused")

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_time()  # a macro calling itself twice is 2**n steps without a loop
        if isinstance(obj, BuiltinMethodType) and isinstance(obj.__self__, str):
            _refuse_big_numbers(args, kwargs)  # 'x'.center(10**9), ljust, rjust, zfill, expandtabs
        # str.format and format_map, which the sandbox hands out wrapped (the only wrapped ones).
        wrapped = getattr(obj, "__wrapped__", None)
        if isinstance(wrapped, BuiltinMethodType) and isinstance(wrapped.__self__, str):
            _refuse_wide_formats(_format_widths(wrapped.__self__))
        return _refuse_long(super().call(context, obj, *args, **kwargs))


_ENVIRONMENTS = {autoescape: _Sandbox(autoescape=autoescape) for autoescape in (False, True)}
