"""``python -m mas_sync demo``: run a small multi-agent demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` and run the command it names."""
    parser = argparse.ArgumentParser(prog="python -m mas_sync")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run a small multi-agent system and print what happens"
    )
    demo.add_argument(
        "--redis-url",
        default=os.environ.get("MAS_REDIS_URL") or None,
        help="Redis to use (default: $MAS_REDIS_URL, else a private redis-server)",
    )
    demo.add_argument("--verbose", action="store_true", help="show the library's log")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .tools import demo as _demo

    try:
        return _demo.run(args.redis_url)
    except FileNotFoundError as exc:  # no redis-server to start
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
