"""``mas_sync dashboard``: serve the live web dashboard until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import CommandError, connect, redis_url


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``dashboard``."""
    parser = commands.add_parser(
        "dashboard", parents=[common], help="serve the live web dashboard until Ctrl-C",
        description="Serve the web dashboard (one page, read from Redis alone) until Ctrl-C"
        " or SIGTERM. It is read-only unless --allow-actions is given.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_port, default=8765, help="the port (default: 8765)")
    parser.add_argument("--allow-actions", action="store_true",
                        help="let the page requeue and purge dead letters")
    parser.set_defaults(run=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard."""
    try:
        from .._dashboard import serve
    except ImportError as exc:
        raise CommandError(f"the dashboard cannot be loaded: {exc}") from None
    with connect(args):  # a bad URL or an unreachable Redis fails here, in one line
        pass
    serve(redis_url(args), host=args.host, port=args.port, allow_actions=args.allow_actions)
    return 0
