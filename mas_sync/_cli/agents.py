"""``mas_sync agents``: a table of the registered agents, their liveness and rates."""

from __future__ import annotations

import argparse
import time
from typing import Any, List

from .. import _wire
from .._overview import STALE, AgentView, list_agents
from . import _output
from ._common import connect

HEADERS = ("ID", "STATUS", "DELIVERY", "INSTANCES", "HEARTBEAT", "RECV/S", "DONE/S",
           "CAPABILITIES")
_STATUS_COLOURS = {1: {"ACTIVE": "green", STALE: "yellow", _wire.STATUS_INACTIVE: "dim"}}


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``agents``."""
    parser = commands.add_parser(
        "agents", parents=[common], help="list the agents: status, heartbeat, instances, rates",
        description="List the registered agents, sorted by id: STATUS is ACTIVE, STALE (its"
        " heartbeat key is gone: stopped without deregistering, or cut off) or INACTIVE"
        " (marked by a registry service); HEARTBEAT the age of its last beat; RECV/S and"
        " DONE/S the messages received and handled per second, from the counters the agent"
        " writes on each beat ('-' when it writes none).",
    )
    parser.add_argument("--capability", metavar="C", help="only the agents with capability C")
    parser.add_argument("--all", action="store_true", help="also the INACTIVE ones")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of the agents (one object each)")
    parser.set_defaults(run=run)


def heartbeat(view: AgentView, now: float) -> str:
    """The age of the last beat: ``1.2s ago``; ``gone`` (no heartbeat key); ``?`` (unreadable)."""
    if view.stale:
        return "gone"
    age = view.heartbeat_age(now)
    return "?" if age is None else _output.age(age)


def run(args: argparse.Namespace) -> int:
    """List the agents."""
    with connect(args) as client:
        views = list_agents(client, capability=args.capability, include_inactive=args.all)
    now = time.time()
    if args.json:
        _output.print_json([view.to_json(now) for view in views])
        return 0
    rows: List[List[Any]] = []
    for view in views:
        rates = view.stats.rates if view.stats is not None and view.stats.fresh else {}
        rows.append([
            view.id, view.shown_status, view.delivery, view.instances,
            heartbeat(view, now),
            _output.rate(rates.get("received")), _output.rate(rates.get("handled")),
            view.capabilities,
        ])
    if rows:
        print(_output.table(HEADERS, rows, _STATUS_COLOURS))
    else:
        print("no agents" + (f" with capability {args.capability!r}" if args.capability else ""))
    return 0
