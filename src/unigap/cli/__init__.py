"""The `unigap` command line: one typer app, one sub-app per pipeline stage.

`main` is the console-script entry point. It turns a `UserError` (or a bad flag, which typer/click
reports itself) into one line on stderr and exit code 2, so a user's mistake never shows a traceback.
"""

from __future__ import annotations

import sys

import typer

from unigap.errors import UserError

app = typer.Typer(
    name="unigap",
    help="Measure and close the understanding-generation gap of unified multimodal models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach each stage's sub-app; imported lazily so `unigap --help` stays fast."""
    from unigap.cli.world import app as world_app

    app.add_typer(world_app, name="world")


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user mistakes become `unigap: error: ...` on stderr with exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except UserError as exc:
        print(f"unigap: error: {exc}", file=sys.stderr)
        sys.exit(2)
