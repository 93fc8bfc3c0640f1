"""Command line: parse, call, print. No decisions live here.

Exit codes: 0 ok, 1 error, 2 usage, 3 `claim` found no eligible prebuild.

The grammar (commands, flags, environment defaults) is prebuildd.cli_parser; the handlers are
prebuildd.cli_commands. `main` is the console script (`prebuildd`, `python -m prebuildd.cli`):
it sets up logging, dispatches, and turns the errors a command may end with into exit codes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import psycopg

from prebuildd.claim import ClaimError
from prebuildd.cli_commands import (
    COMMANDS,
    EXIT_ERROR,
    EXIT_NONE_AVAILABLE,
    EXIT_OK,
    EXIT_USAGE,
    database,
)
from prebuildd.cli_parser import build_parser
from prebuildd.config import ConfigError, redact_dsn, settings_from
from prebuildd.embedded import EmbeddedPostgresError

__all__ = [
    "EXIT_ERROR",
    "EXIT_NONE_AVAILABLE",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "database",
    "main",
    "settings_from",
]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from prebuildd.logs import setup_logging

    try:
        setup_logging(args.log_level, args.log_format)
    except ValueError as exc:
        print(f"prebuildd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"prebuildd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClaimError as exc:
        print(f"prebuildd: claim refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (psycopg.Error, EmbeddedPostgresError, OSError) as exc:
        print(f"prebuildd: {redact_dsn(str(exc)).strip()}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
