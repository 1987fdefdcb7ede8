"""The command-line tool: ``mas_sync COMMAND`` (a console script) or ``python -m mas_sync COMMAND``.

The commands live in :mod:`mas_sync._cli`, one module each; this module
builds the parser from them and turns every error into one line on stderr
(``error: ...``) and an exit status: 0 done, 1 failed (Redis unreachable or
failing, an unknown agent, no reply), 2 a usage error (argparse's, and a bad
Redis URL or JSON argument).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ._cli import COMMANDS
from ._cli._common import DEFAULT_REDIS_URL, URL_ENV, CommandError, UsageError, redis_url
from ._cli._output import one_line
from ._errors import MASError
from ._redis import ANY_REDIS_ERROR, redact_text, redact_url

#: The program name in usage lines.
PROG = "mas_sync"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    url_help = (f"the Redis to use, any URL form of mas_sync (default: ${URL_ENV},"
                f" else {DEFAULT_REDIS_URL})")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate a mas_sync deployment: list and inspect agents, send and"
        " watch messages, prune dead registrations, handle dead letters, run the service.",
        epilog="Exit status: 0 done, 1 failed (Redis unreachable, unknown agent, no reply),"
        " 2 bad usage.",
    )
    parser.add_argument("--redis-url", metavar="URL", default=None, help=url_help)
    # Each command takes --redis-url too (after its name); not given, it leaves the
    # value above alone.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", metavar="URL", default=argparse.SUPPRESS, help=url_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parsers(commands, common)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return the exit status.

    Errors are printed as one line on stderr, never a traceback; argparse's
    usage errors (and ``--help``) raise ``SystemExit`` as argparse does.
    """
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        # A terminal that cannot show a character (an arrow, a payload's text)
        # gets it escaped rather than a UnicodeEncodeError.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # pragma: no cover - a stream that cannot
                pass
    try:
        return int(args.run(args))
    except UsageError as exc:
        _error(str(exc))
        return 2
    except (CommandError, MASError) as exc:
        _error(str(exc))
        return 1
    except ANY_REDIS_ERROR as exc:
        url = redis_url(args)
        _error(f"Redis at {redact_url(url)} failed: {redact_text(str(exc), url)}")
        return 1
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
