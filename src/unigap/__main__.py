"""The `unigap` console script (and `python -m unigap`): `unigap.cli.main`, imported here so that a ^C while the CLI
is still being imported (about a second) ends as every later one does, in one line and exit 130, not a traceback."""

from __future__ import annotations

import sys

from unigap.errors import INTERRUPTED


def main() -> None:
    try:
        from unigap.cli import main as cli_main
    except KeyboardInterrupt:
        print("unigap: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    cli_main()


if __name__ == "__main__":
    main()
