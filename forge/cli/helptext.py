"""How `forge --help` and `forge VERB --help` are laid out.

On a terminal wide enough for them, typer's rich panels (boxes, colours, the verbs grouped by
`rich_help_panel`). Everywhere else (a pipe, a CI log, a narrow terminal) click's plain layout,
which wraps help text under a long option name instead of cutting the name: nothing is ever
cut, and no line is longer than 80 characters. The plain layout groups the verbs the same way."""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager

from typer.core import TyperCommand, TyperGroup

# the narrowest terminal on which every verb's rich option table shows every option name whole
# (tests/test_cli.py checks this width and 80 columns)
RICH_MIN_COLUMNS = 110


def rich_help() -> bool:
    return sys.stdout.isatty() and shutil.get_terminal_size().columns >= RICH_MIN_COLUMNS


@contextmanager
def _layout(command):
    """Rich panels on a wide terminal, click's plain layout otherwise (markup mode None)."""
    mode = command.rich_markup_mode
    if not rich_help():
        command.rich_markup_mode = None
    try:
        yield
    finally:
        command.rich_markup_mode = mode


class ForgeCommand(TyperCommand):
    def format_help(self, ctx, formatter) -> None:
        with _layout(self):
            return super().format_help(ctx, formatter)


class ForgeGroup(TyperGroup):
    def format_help(self, ctx, formatter) -> None:
        with _layout(self):
            return super().format_help(ctx, formatter)

    def format_commands(self, ctx, formatter) -> None:
        """The plain layout's verbs, under their panels' titles, each with its first sentence whole."""
        sections: dict[str, list[tuple[str, str]]] = {}
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                title = getattr(cmd, "rich_help_panel", None) or "Commands"
                sections.setdefault(title, []).append((name, cmd.get_short_help_str(limit=1000)))
        width = max((len(name) for rows in sections.values() for name, _ in rows), default=0)
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl([(name.ljust(width), text) for name, text in rows])
