"""Run the registry service in the foreground: ``python -m mas_sync.service``.

It stops cleanly on the first SIGINT (Ctrl-C) or SIGTERM and exits 0; a second
signal exits at once with status 1 (see :func:`mas_sync.stop_on_signals`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from ._errors import MASConnectionError
from ._service import MASService
from .signals import stop_on_signals

log = logging.getLogger("mas_sync.service")


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv``, run the service until a signal, and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m mas_sync.service", description="Run the mas_sync registry service."
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("MAS_REDIS_URL", "redis://localhost:6379"),
        help="Redis URL (default: $MAS_REDIS_URL or redis://localhost:6379)",
    )
    parser.add_argument(
        "--heartbeat-timeout", type=float, default=60.0,
        help="grace in seconds for a new registration's first heartbeat (default: 60)",
    )
    parser.add_argument(
        "--check-interval", type=float, default=30.0,
        help="seconds between health checks (default: 30)",
    )
    parser.add_argument(
        "--prune-after", type=float, default=None, metavar="SECONDS",
        help="remove registrations dead for this long (default: keep them, marked INACTIVE)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Handlers first: a signal that comes while the service starts is not lost.
    stop = stop_on_signals(exit_process=False)
    try:
        service = MASService(
            args.redis_url, args.heartbeat_timeout, args.check_interval,
            prune_after=args.prune_after,
        )
        service.start()
    except (MASConnectionError, TypeError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    while not stop.wait(1.0):
        pass
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
