"""One renderer for every template file: sandboxed Jinja, compiled once.

Template files are YAML (``cot_templates/<lang>/<set>.yaml``); every template string in
them is Jinja. Rendering is sandboxed (jinja2.sandbox.SandboxedEnvironment), so a
template file from a stranger cannot reach Python internals; each template is
test-rendered at load time, so a template that breaks the sandbox or names an unknown
variable fails with its file and id before any data is read.

Bounds: a template cannot make a render run away. String and list repetition, powers,
%-formatting, padding filters and str methods are refused when they would build more than
MAX_OUTPUT characters; range() is capped; a render stops past MAX_OUTPUT characters of
output or RENDER_SECONDS of time. A template that hits a bound at load time fails with
its file and id; one that hits it on one record sends that record to quarantine.

Speed: a template whose body is only text and ``{{ name }}`` substitutions (most of
them) is also compiled to a list of parts and rendered for a whole Arrow column at once
with pyarrow's element-wise join. Both paths give the same bytes; tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from forge.formatters.safeyaml import YamlInputError, load_yaml_file

MAX_OUTPUT = 1 << 20  # characters one render may produce
MAX_LOOP = 100_000  # items all range() calls of one render may produce together
RENDER_SECONDS = 2.0


class _Bounded(SandboxedEnvironment):
    """The sandbox, plus limits on what one render may allocate."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
                    raise SecurityError(
                        f"repetition would build {len(seq) * n:,} items (limit {MAX_OUTPUT:,})"
                    )
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(right) > 256 and abs(left) > 1:
                raise SecurityError(f"power with exponent {right} is not allowed (limit 256)")
        elif operator == "%" and isinstance(left, str):
            _check_widths(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's signature
        _check_args(args, kwargs)
        if getattr(__obj, "__name__", "") == "format" and isinstance(getattr(__obj, "__self__", None), str):
            _check_widths(__obj.__self__)
        return super().call(__context, __obj, *args, **kwargs)


def _check_args(args, kwargs) -> None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_OUTPUT:
            raise SecurityError(f"argument {v:,} is larger than the {MAX_OUTPUT:,} a template may use")


def _check_widths(fmt: str) -> None:
    import re

    for width in re.findall(r"\d{7,}", fmt):
        if int(width) > MAX_OUTPUT:
            raise SecurityError(f"format width {int(width):,} is larger than {MAX_OUTPUT:,}")


_loop_budget = [MAX_LOOP]


def _bounded_range(*args):
    r = range(*args)
    _loop_budget[0] -= len(r)
    if _loop_budget[0] < 0:
        raise SecurityError(f"range() calls of one render exceed {MAX_LOOP:,} items")
    return r


def _guard_filter(fn):
    def guarded(*args, **kwargs):
        _check_args(args[1:], kwargs)
        if fn is _ENV_FILTERS["format"] and args and isinstance(args[0], str):
            _check_widths(args[0])
        return fn(*args, **kwargs)

    return guarded


_ENV = _Bounded(keep_trailing_newline=True, undefined=StrictUndefined, autoescape=False)
_ENV.globals["range"] = _bounded_range
_ENV_FILTERS = dict(_ENV.filters)
for _name in ("center", "indent", "format", "wordwrap", "truncate", "batch", "slice"):
    _ENV.filters[_name] = _guard_filter(_ENV_FILTERS[_name])


def bounded_render(compiled, context: dict) -> str:
    """Render under the bounds: output size, loop budget and (in the main thread) time."""
    import signal
    import threading

    _loop_budget[0] = MAX_LOOP
    timed = threading.current_thread() is threading.main_thread()
    if timed:

        def expire(_sig, _frame):
            raise SecurityError(f"render took longer than {RENDER_SECONDS:g} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, RENDER_SECONDS)
    try:
        out, size = [], 0
        for piece in compiled.generate(context):
            size += len(piece)
            if size > MAX_OUTPUT:
                raise SecurityError(f"render output exceeds {MAX_OUTPUT:,} characters")
            out.append(piece)
        return "".join(out)
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class TemplateFileError(ValueError):
    pass


@dataclass
class Template:
    id: str
    file: str
    source: str
    compiled: object
    parts: list[tuple[str, str]] | None  # ("text", s) / ("var", name); None: needs full Jinja

    def render(self, context: dict) -> str:
        if self.parts is not None:  # text and substitutions only: nothing to bound
            return self.compiled.render(context)
        try:
            return bounded_render(self.compiled, context)
        except SecurityError as e:
            raise TemplateFileError(f"{self.file}: template {self.id!r}: {e}") from None

    def render_columns(self, columns: dict[str, pa.Array], length: int) -> pa.Array:
        if self.parts is None:
            rows = [
                dict(zip(columns, vals, strict=True))
                for vals in zip(*(c.to_pylist() for c in columns.values()), strict=True)
            ]
            return pa.array([self.render(r) for r in rows], type=pa.string())
        pieces = []
        for kind, value in self.parts:
            if kind == "text":
                pieces.append(pa.scalar(value, pa.string()))
            else:
                pieces.append(pc.fill_null(columns[value], ""))
        if not any(isinstance(p, pa.Array | pa.ChunkedArray) for p in pieces):
            return pa.array([self.render({})] * length, type=pa.string())
        return pc.binary_join_element_wise(*pieces, "")


def _simple_parts(source: str) -> list[tuple[str, str]] | None:
    tree = _ENV.parse(source)
    parts: list[tuple[str, str]] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(("text", child.data))
            elif isinstance(child, nodes.Name) and child.ctx == "load":
                parts.append(("var", child.name))
            else:
                return None
    return parts


def compile_template(source: str, template_id: str, file: str, variables: tuple[str, ...] | dict) -> Template:
    """Compile once and test-render. `variables` names the fields (placeholder strings are
    used), or maps each field to a sample value for templates that loop or index."""
    sample = variables if isinstance(variables, dict) else {v: f"<{v}>" for v in variables}
    try:
        compiled = _ENV.from_string(source)
        # a trial render with sample values surfaces sandbox violations, bombs and typos now
        bounded_render(compiled, sample)
    except TemplateError as e:
        raise TemplateFileError(f"{file}: template {template_id!r}: {type(e).__name__}: {e}") from e
    return Template(template_id, file, source, compiled, _simple_parts(source))


def load_yaml(path: Path) -> dict:
    try:
        data = load_yaml_file(path)
    except YamlInputError as e:
        raise TemplateFileError(str(e)) from None
    if not isinstance(data, dict):
        raise TemplateFileError(f"{path}: expected a mapping at the top level")
    return data
