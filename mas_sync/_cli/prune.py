"""``mas_sync prune``: remove the registrations whose heartbeat is gone."""

from __future__ import annotations

import argparse
from typing import Any

from .._registry import AgentRegistry
from . import _output
from ._common import connect, seconds


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``prune``."""
    parser = commands.add_parser(
        "prune", parents=[common], help="remove the registrations whose heartbeat is gone",
        description="Remove now each registration whose heartbeat key is gone, with its"
        " counters (agent:{id}:stats), and publish DEREGISTER for it, as a deregistration"
        " does; its state (agent.state:{id}) is kept. Each removal is checked again as it"
        " is made: an agent that beats again is left alone. This is"
        " AgentRegistry.remove_dead(), which a service of yours can run too.",
    )
    parser.add_argument("--older-than", type=seconds, metavar="S",
                        help="only those with no sign of life (registration, counters) for"
                        " S seconds")
    parser.add_argument("--dry-run", action="store_true",
                        help="only list what would be removed")
    parser.add_argument("--json", action="store_true", help="print a JSON list of the ids")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prune."""
    with connect(args) as client:
        removed = AgentRegistry(client).remove_dead(args.older_than, dry_run=args.dry_run)
    if args.json:
        _output.print_json(removed)
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for agent in removed:
        print(f"{verb} {agent}")
    if not removed:
        print("no registration to remove")
    return 0
