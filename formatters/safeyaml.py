"""The one YAML loader for files users write (catalogs, mixtures, template files).

yaml.safe_load refuses Python objects but still expands aliases: a few hundred bytes of
nested `*a` references (a "billion laughs") build gigabytes. Files forge reads never need
aliases, so they are refused outright, with the line where one appears; so are files
larger than MAX_BYTES and nesting deep enough to exhaust the parser's recursion.
"""

from __future__ import annotations

from pathlib import Path

import yaml

MAX_BYTES = 16 << 20


class YamlInputError(ValueError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise YamlInputError(
                f"line {mark.line + 1}: YAML aliases (*name) are not allowed in forge files; "
                f"write the value out"
            )
        return super().compose_node(parent, index)


def load_yaml_file(path: Path):
    """Parse a user YAML file; every failure is a YamlInputError naming the file."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise YamlInputError(f"{path}: {size:,} bytes is larger than the {MAX_BYTES:,} forge reads")
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise YamlInputError(f"{path}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise YamlInputError(f"{path}: not UTF-8 text (byte {e.start})") from e
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except YamlInputError as e:
        raise YamlInputError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise YamlInputError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise YamlInputError(f"{path}: YAML nested too deeply") from None


def key_lines(path: Path) -> dict[str, int]:
    """1-based line of each top-level key of a YAML mapping file (for error messages)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8-sig"), Loader=_NoAliasLoader)  # noqa: S506
    except (yaml.YAMLError, YamlInputError, RecursionError):
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
