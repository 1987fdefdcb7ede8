"""``mas_sync send``, ``request`` and ``watch``: talk to agents, and tail what they say.

``send`` and ``request`` run a short-lived :class:`~mas_sync.Agent` (pub/sub,
no capabilities) as the sender, so that the message is exactly what an agent
sends: a reliable target gets it in its stream, and a reply comes back on the
sender's channel. It registers for the command's length and deregisters
before the command returns.
"""

from __future__ import annotations

import argparse
import datetime
import secrets
from typing import Any, List, Optional

from .. import _wire
from .._agent import Agent
from .._errors import RequestError, RequestTimeout
from .._overview import agent_view
from .._tail import Tail, TailEvent
from ..signals import stop_on_signals
from . import _output
from ._common import CommandError, UsageError, agent_id, connect, json_object, redis_url, seconds
from ._common import unknown_agent

#: The prefix of the sender's id when ``--as`` gives none.
SENDER_PREFIX = "mas-cli-"
#: The longest ``watch`` waits for an event before it looks for a signal.
WAIT = 0.25


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``send``, ``request`` and ``watch``."""
    sender = argparse.ArgumentParser(add_help=False)
    sender.add_argument(
        "--as", dest="sender", metavar="ID",
        help="the sender's agent id, registered while the command runs"
        f" (default: {SENDER_PREFIX}<random>)",
    )
    send = commands.add_parser(
        "send", parents=[common, sender], help="send a message (a JSON object) to an agent",
        description="Send a JSON object to an agent, as an agent would (a reliable agent"
        " gets it in its stream, also while it is stopped), and print its message id."
        " Exits with status 1 when the target is neither registered nor has a stream.",
    )
    send.add_argument("agent", metavar="ID", help="the target agent's id")
    send.add_argument("payload", metavar="JSON", help='the payload, a JSON object: \'{"n": 1}\'')
    send.add_argument("--json", action="store_true", help='print {"message_id": ...}')
    send.set_defaults(run=run_send)
    request = commands.add_parser(
        "request", parents=[common, sender],
        help="send a request to an agent and print its reply (JSON)",
        description="Send a request to an agent and print the payload of its reply as"
        " JSON. Exits with status 1 when no reply comes in time, when the reply is an"
        " error, or when the target is not registered.",
    )
    request.add_argument("agent", metavar="ID", help="the target agent's id")
    request.add_argument("payload", metavar="JSON", help="the payload, a JSON object")
    request.add_argument("--timeout", type=seconds, default=30.0, metavar="S",
                         help="seconds to wait for the reply (default: 30)")
    request.set_defaults(run=run_request)
    watch = commands.add_parser(
        "watch", parents=[common],
        help="print the messages and mas.system events as they pass, until Ctrl-C",
        description="Print a line per message (time, kind: message, request, reply or"
        " error; sender \u2192 target, size, the request's id, the payload) and per"
        " mas.system event as they pass, the streams of reliable agents included, until"
        " Ctrl-C or SIGTERM (exit status 0). It sees what passes while it runs.",
    )
    watch.add_argument("agents", nargs="*", metavar="ID",
                       help="only the messages to these agents, and the mas.system events"
                       " about them (default: all)")
    watch.add_argument("--json", action="store_true", help="print one JSON object per line")
    watch.set_defaults(run=run_watch)


def _sender(args: argparse.Namespace) -> Agent:
    """The short-lived agent that sends, checked and not yet started."""
    name = agent_id(args.sender or SENDER_PREFIX + secrets.token_hex(4), "sender id (--as)")
    try:
        return Agent(name, redis_url=redis_url(args), heartbeat_interval=5.0,
                     heartbeat_ttl=15.0, max_workers=1)
    except (TypeError, ValueError) as exc:  # the URL
        raise UsageError(str(exc)) from None


def _checked_target(args: argparse.Namespace) -> str:
    """The target's id, once Redis says it is registered, or has a stream.

    A reliable agent that stopped is no longer registered; its stream keeps
    what is sent to it until it runs again.
    """
    target = agent_id(args.agent, "target id")
    with connect(args) as client:
        if agent_view(client, target) is None and not client.exists(_wire.stream_key(target)):
            raise unknown_agent(target)
    return target


def run_send(args: argparse.Namespace) -> int:
    """Send one message."""
    payload = json_object(args.payload)
    agent = _sender(args)
    target = _checked_target(args)
    agent.start()
    try:
        message_id = agent.send(target, payload)
    finally:
        agent.stop()
    if args.json:
        _output.print_json({"message_id": message_id})
    else:
        print(message_id)
    return 0


def run_request(args: argparse.Namespace) -> int:
    """Send one request and print its reply."""
    payload = json_object(args.payload)
    agent = _sender(args)
    target = _checked_target(args)
    agent.start()
    try:
        reply = agent.request(target, payload, timeout=args.timeout)
    except RequestTimeout:
        raise CommandError(f"no reply from {target!r} within {args.timeout:g} s") from None
    except RequestError as exc:
        raise CommandError(str(exc)) from None
    finally:
        agent.stop()
    _output.print_json(reply.payload)
    return 0


def run_watch(args: argparse.Namespace) -> int:
    """Print the tail until a signal."""
    ids: Optional[List[str]] = [agent_id(a) for a in args.agents] or None
    with connect(args):  # a bad URL or an unreachable Redis fails here, in one line
        pass
    with stop_on_signals(exit_process=False) as stop:
        with Tail(redis_url(args), ids) as tail:
            after = 0
            while not stop.is_set():
                after, events = tail.wait(after, WAIT)
                for event in events:
                    print(_output.dumps(event.to_json()) if args.json else line(event),
                          flush=True)
    return 0


def line(event: TailEvent) -> str:
    """One event of the tail as a line of text: time, kind, sender → target, size, payload."""
    at = datetime.datetime.fromtimestamp(event.at).strftime("%H:%M:%S.%f")[:-3]
    if event.kind == "system":
        return f"{at}  {event.kind:<7}  {_output.one_line(event.summary)}"
    mark = f"  [{event.correlation_id[:8]}]" if event.correlation_id else ""
    return (f"{at}  {event.kind:<7}  {event.sender or '?'} \u2192 {event.target or '?'}"
            f"  {event.size} B{mark}  {_output.one_line(event.summary)}")
