"""``mas_sync bench``: the benchmarks of :mod:`mas_sync.bench`, with their own arguments."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``bench``: every argument after it goes to ``python -m mas_sync.bench``."""
    bench = commands.add_parser(
        "bench", add_help=False, prefix_chars="\0",
        help="run the benchmarks (its own arguments: mas_sync bench --help)",
        description="Run python -m mas_sync.bench with the arguments that follow. It flushes"
        " the database it runs on, so it takes no Redis from --redis-url or $MAS_REDIS_URL:"
        " a private redis-server by default, or its own --redis-url.",
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks."""
    from ..tools.bench import main

    return main(list(args.bench_args))
