"""``mas_sync demo``: a small multi-agent system, on a private redis-server by default."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from .._redis import check_redis_url
from ._common import CommandError, UsageError


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``demo``."""
    demo = commands.add_parser(
        "demo", help="run a small multi-agent system and print what happens",
        description="Run a small multi-agent system and print what happens, on the Redis"
        " that --redis-url or $MAS_REDIS_URL names, else on a private redis-server.",
    )
    demo.add_argument(
        "--redis-url", default=argparse.SUPPRESS,
        help="Redis to use (default: $MAS_REDIS_URL, else a private redis-server)",
    )
    demo.add_argument("--verbose", action="store_true", help="show the library's log")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from ..tools import demo as _demo

    url = getattr(args, "redis_url", None) or os.environ.get("MAS_REDIS_URL") or None
    if url is not None:
        try:
            check_redis_url(url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        return _demo.run(url)
    except FileNotFoundError as exc:  # no redis-server to start
        raise CommandError(str(exc)) from None
