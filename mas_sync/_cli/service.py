"""``mas_sync service``: run the registry service (:class:`~mas_sync.MASService`) until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .._service import MASService
from ..signals import stop_on_signals
from ._common import UsageError, connect, redis_url, seconds

log = logging.getLogger("mas_sync.service")


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``service``."""
    parser = commands.add_parser(
        "service", parents=[common], help="run the registry service until Ctrl-C",
        description="Run the registry service (MASService), which marks INACTIVE the agents"
        " whose heartbeat is gone, until Ctrl-C or SIGTERM (exit status 0; a second signal"
        " exits at once). It logs to stderr.",
    )
    parser.add_argument("--heartbeat-timeout", type=seconds, default=60.0, metavar="S",
                        help="grace for a new registration's first heartbeat (default: 60)")
    parser.add_argument("--health-interval", "--check-interval", dest="check_interval",
                        type=seconds, default=30.0, metavar="S",
                        help="seconds between health checks (default: 30)")
    parser.add_argument("--prune-after", type=seconds, default=None, metavar="S",
                        help="remove registrations dead for this long (default: keep them,"
                        " marked INACTIVE)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the service until a signal."""
    level = logging.getLevelName(args.log_level.upper())
    if not isinstance(level, int):
        raise UsageError(f"not a logging level: {args.log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with connect(args):  # a bad URL or an unreachable Redis fails here, in one line
        pass
    try:
        service = MASService(redis_url(args), args.heartbeat_timeout, args.check_interval,
                             prune_after=args.prune_after)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    # Handlers first: a signal that comes while the service starts is not lost.
    with stop_on_signals(exit_process=False) as stop:
        service.start()
        try:
            stop.wait()
        finally:
            service.stop()
    return 0
