"""``mas_sync inspect ID`` and ``mas_sync state ID``: one agent, read from Redis alone."""

from __future__ import annotations

import argparse
import datetime
import time
from typing import Any, List, Optional, Tuple

from .. import _wire
from .._overview import AgentView, agent_view, read_state, stream_view
from . import _output
from ._common import agent_id, connect, unknown_agent
from .agents import heartbeat

#: STATUS of an id that has state or a stream but no registration.
NOT_REGISTERED = "NOT REGISTERED"
#: The counters shown even when they are 0.
_ALWAYS = ("received", "handled", "handler_errors")


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``inspect`` and ``state``."""
    parser = commands.add_parser(
        "inspect", parents=[common],
        help="show one agent: registration, metadata, state, counters, stream",
        description="Show one agent as Redis holds it: its registration and metadata, its"
        " state (agent.state:{id}), its counters (agent:{id}:stats), and for a reliable"
        " agent its stream length, the pending entries and lag of its group, its consumers"
        " and its dead letters. An id with state or a stream but no registration (a"
        " reliable agent that stopped) is shown as NOT REGISTERED; an id Redis knows"
        " nothing of exits with status 1.",
    )
    parser.add_argument("agent", metavar="ID", help="the agent's id")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run_inspect)
    state = commands.add_parser(
        "state", parents=[common], help="print one agent's state (agent.state:{id})",
        description="Print the state of an agent, field by field, as the state manager"
        " stores it (strings; a typed agent's lists, dicts and models as JSON). Exits with"
        " status 1 when the id is neither registered nor has state.",
    )
    state.add_argument("agent", metavar="ID", help="the agent's id")
    state.add_argument("--json", action="store_true", help="print one JSON object")
    state.set_defaults(run=run_state)


def run_state(args: argparse.Namespace) -> int:
    """Print an agent's state."""
    agent = agent_id(args.agent)
    with connect(args) as client:
        state = read_state(client, agent)
        if not state and agent_view(client, agent) is None:
            raise unknown_agent(agent)
    if args.json:
        _output.print_json(state)
    elif state:
        print(_output.pairs(list(state.items())))
    else:
        print(f"agent {agent!r} has no state")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """Show one agent."""
    agent = agent_id(args.agent)
    with connect(args) as client:
        view = agent_view(client, agent)
        state = read_state(client, agent)
        stream = stream_view(client, agent)
        if view is None and not state and stream is None:
            raise unknown_agent(agent)
    now = time.time()
    if args.json:
        _output.print_json({
            "id": agent,
            "registered": view is not None,
            "agent": None if view is None else view.to_json(now),
            "state": state,
            "stream": None if stream is None else stream.to_json(),
        })
        return 0
    print(_output.pairs(_registration(agent, view, now)))
    print("\nstate" + ("" if state else "  (none)"))
    if state:
        print(_output.pairs(list(state.items()), indent="  "))
    stats = None if view is None else view.stats
    if stats is None:
        print("\ncounters  (none written)")
    else:
        print(f"\ncounters  ({stats.runs} run(s), {stats.fresh} fresh;"
              f" last written {_output.age(None if stats.at is None else now - stats.at)})")
        shown = [(name, value) for name, value in sorted(stats.counters.items())
                 if value or name in _ALWAYS]
        print(_output.pairs(shown, indent="  "))
        if len(shown) < len(stats.counters):
            print("  (the other counters are 0; --json shows them all)")
        print(_output.pairs([
            ("received/s", _output.rate(stats.rates.get("received"))),
            ("handled/s", _output.rate(stats.rates.get("handled"))),
            ("pending", stats.pending), ("in progress", stats.in_progress),
        ], indent="  "))
    if stream is not None:
        print(f"\nstream  {_wire.stream_key(agent)}")
        print(_output.pairs([
            ("length", stream.length), ("pending", stream.pending),
            ("lag", "unknown" if stream.lag is None else stream.lag),
            ("dead letters", stream.dead_letters),
        ], indent="  "))
        if stream.consumers:
            print("\nconsumers")
            print(_output.table(
                ("NAME", "PENDING", "IDLE"),
                [(c.name, c.pending, f"{c.idle:.1f}s") for c in stream.consumers], indent="  ",
            ))
    return 0


def _registration(agent: str, view: Optional[AgentView], now: float) -> List[Tuple[str, Any]]:
    if view is None:
        return [("id", agent), ("status", NOT_REGISTERED)]
    delivery = view.delivery
    if view.delivery == _wire.DELIVERY_RELIABLE:
        delivery += f" ({view.instances} live instance{'s' if view.instances != 1 else ''})"
    return [
        ("id", view.id),
        ("status", view.shown_status),
        ("delivery", delivery),
        ("capabilities", ", ".join(view.capabilities) or "-"),
        ("registered", _when(view.registered_at, now)),
        ("heartbeat", heartbeat(view, now)),
        ("metadata", _output.dumps(view.metadata)),
    ]


def _when(at: float, now: float) -> str:
    if not at:
        return "unknown"
    stamp = datetime.datetime.fromtimestamp(at).isoformat(sep=" ", timespec="seconds")
    return f"{stamp} ({_output.age(max(0.0, now - at))})"


