"""One renderer for every template file: sandboxed Jinja, compiled once.

Template files are YAML (``cot_templates/<lang>/<set>.yaml``); every template string in
them is Jinja. Rendering is sandboxed (jinja2.sandbox.SandboxedEnvironment), so a
template file from a stranger cannot reach Python internals; each template is
test-rendered at load time, so a template that breaks the sandbox or names an unknown
variable fails with its file and id before any data is read.

Speed: a template whose body is only text and ``{{ name }}`` substitutions (most of
them) is also compiled to a list of parts and rendered for a whole Arrow column at once
with pyarrow's element-wise join. Both paths give the same bytes; tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.sandbox import SandboxedEnvironment

_ENV = SandboxedEnvironment(keep_trailing_newline=True, undefined=StrictUndefined, autoescape=False)


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
        return self.compiled.render(context)

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
        # a trial render with sample values surfaces sandbox violations and typos now
        compiled.render(sample)
    except TemplateError as e:
        raise TemplateFileError(f"{file}: template {template_id!r}: {type(e).__name__}: {e}") from e
    return Template(template_id, file, source, compiled, _simple_parts(source))


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TemplateFileError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise TemplateFileError(f"{path}: expected a mapping at the top level")
    return data
