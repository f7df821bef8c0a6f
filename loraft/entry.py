"""The `loraft` console script and `python -m loraft`: a Ctrl-C while the command line's own
modules are still importing ends as cleanly as one later on (one line, exit code 130)."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from loraft.cli import main as run_command
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    run_command()
