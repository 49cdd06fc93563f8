"""The `forge` command line. The app and its main() are in forge.cli.root; importing this
package loads neither. A spawned worker process (build parts, dedup's steps) imports the script
that started its parent, `from forge.cli import main`, and should not load typer, rich and
every verb's module for nothing: that was 18 MB and a third of a second in each worker."""

from __future__ import annotations


def main() -> None:
    """The `forge` command (pyproject's [project.scripts])."""
    from forge.cli.root import main as run

    run()


def __getattr__(name: str):
    if name == "app":  # `from forge.cli import app`: the typer app, loaded on first use
        from forge.cli.root import app

        return app
    raise AttributeError(f"module 'forge.cli' has no attribute {name!r}")
