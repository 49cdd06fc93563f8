"""The `forge` command line: the app, its global options (--version, --debug) and main(), which
turns every failure into one line (forge.cli.main hands over to it). The verbs live in one module a group, as `forge --help`
shows them: data, stages (model stages), mixtures, model (train), use, evaluate; common holds
what they share. Heavy libraries (torch, transformers, peft) are imported inside the verbs that
need them, so `forge --help` and the data verbs start fast."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from forge.cli import data, evaluate, mixtures, model, stages, use
from forge.cli.common import console, err
from forge.cli.helptext import ForgeGroup
from forge.errors import ForgeError
from forge.quiet import own_stderr

app = typer.Typer(
    cls=ForgeGroup,
    help="forge: raw instruction corpora -> tagged Parquet catalog -> weighted mixtures -> PEFT fine-tunes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # forge --install-completion bash|zsh|fish
)
for group in (data, stages, mixtures, model, use, evaluate):  # the order of `forge --help`
    group.register(app)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"forge {version('forge-instruct')}", highlight=False)
        except PackageNotFoundError:
            console.print("forge (not installed as a package)", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show library warnings and logs, and the full traceback of an error (or set FORGE_DEBUG=1).",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print forge's version.", callback=_show_version, is_eager=True)
    ] = False,
):
    if debug:
        os.environ["FORGE_DEBUG"] = "1"
        own_stderr(debug=True)


def main() -> None:
    """Every failure ends in one line naming what went wrong; --debug or FORGE_DEBUG=1 adds
    the traceback."""
    own_stderr()  # library logs, warnings and progress bars stay off stderr unless --debug
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]; nothing half-written was committed", highlight=False)
        sys.exit(130)
    except Exception as e:
        kinds = {c.__name__ for c in type(e).__mro__}  # click's classes, vendored by recent typer
        if "NoArgsIsHelpError" in kinds:  # `forge` alone: the help
            e.show()
            sys.exit(e.exit_code)
        if "UsageError" in kinds:  # a wrong flag or value: one line, like every other error
            where = e.ctx.command_path if e.ctx else "forge"
            err.print(
                f"[bold red]error:[/] {escape(e.format_message())} (see {where} --help)", highlight=False
            )
            sys.exit(e.exit_code)
        if "Abort" in kinds:  # click's form of Ctrl-C
            err.print("[bold red]interrupted[/]; nothing half-written was committed", highlight=False)
            sys.exit(130)
        if os.environ.get("FORGE_DEBUG", "") not in ("", "0"):
            raise
        err.print(f"[bold red]error:[/] {escape(_one_line(e))}", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, ForgeError):
        return text
    if isinstance(e, OSError) and e.filename:
        text = f"{e.filename}: {e.strerror or text}"
    # not an error forge anticipated: say so, and where the traceback is
    return f"{type(e).__name__}: {text[:500]} (run with --debug for the traceback)"
