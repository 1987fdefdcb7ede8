"""``mas_sync dlq list|requeue|purge ID``: a reliable agent's dead letters."""

from __future__ import annotations

import argparse
import time
from typing import Any, List, Optional

from .. import _wire
from .._dead_letters import DeadLetter, DeadLetters
from .._overview import agent_view
from . import _output
from ._common import UsageError, agent_id, connect, unknown_agent


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``dlq`` and its subcommands."""
    parser = commands.add_parser(
        "dlq", parents=[common], help="list, requeue or purge a reliable agent's dead letters",
        description="The dead letters of a reliable agent (agent.dlq:{id}): the messages it"
        " gave up on. Each subcommand exits with status 1 for an id that is neither"
        " registered nor has a stream or dead letters.",
    )
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", parents=[common], help="list the oldest dead letters",
        description="List the oldest dead letters: id, when, attempts, error, message.",
    )
    listing.add_argument("agent", metavar="ID", help="the agent's id")
    listing.add_argument("--count", type=_count, default=100, metavar="N",
                         help="at most N (default: 100)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(run=run_list)
    requeue = actions.add_parser(
        "requeue", parents=[common], help="put dead letters back in the agent's stream",
        description="Put dead letters back in the agent's stream as new entries (their"
        " attempts count from 1 again): those named, or all of them. (An agent that"
        " signs requeues with its own vouch: use its requeue_dead_letters() instead.)",
    )
    requeue.add_argument("agent", metavar="ID", help="the agent's id")
    requeue.add_argument("entries", nargs="*", metavar="ENTRY_ID",
                         help="dead-letter ids (default: all)")
    requeue.set_defaults(run=run_requeue)
    purge = actions.add_parser(
        "purge", parents=[common], help="delete dead letters",
        description="Delete the dead letters named, or all of them with --yes.",
    )
    purge.add_argument("agent", metavar="ID", help="the agent's id")
    purge.add_argument("entries", nargs="*", metavar="ENTRY_ID", help="dead-letter ids")
    purge.add_argument("--yes", action="store_true",
                       help="delete all of them (needed when no ENTRY_ID is given)")
    purge.set_defaults(run=run_purge)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _entries(args: argparse.Namespace) -> Optional[List[str]]:
    for entry in args.entries:
        if not _wire.is_stream_id(entry):
            raise UsageError(f"not a dead-letter id (<ms>-<seq>): {entry!r}")
    return list(args.entries) or None


def _dead_letters(client: Any, agent: str) -> DeadLetters:
    """The agent's dead letters, once Redis says it knows the agent."""
    letters = DeadLetters(client, agent)
    if not client.exists(letters.dlq, letters.stream) and agent_view(client, agent) is None:
        raise unknown_agent(agent)
    return letters


def run_list(args: argparse.Namespace) -> int:
    """List dead letters."""
    agent = agent_id(args.agent)
    with connect(args, decode=False) as client:
        found = _dead_letters(client, agent).list(args.count)
    if args.json:
        _output.print_json([_json(letter) for letter in found])
        return 0
    if not found:
        print(f"agent {agent!r} has no dead letters")
        return 0
    now = time.time()
    print(_output.table(
        ("ID", "FAILED", "ATTEMPTS", "SENDER", "ERROR", "PAYLOAD"),
        [(letter.id, _output.age(max(0.0, now - letter.failed_at)), letter.attempts,
          letter.message.sender_id if letter.message else "-",
          _output.one_line(letter.error, 60), _payload(letter)) for letter in found],
    ))
    return 0


def run_requeue(args: argparse.Namespace) -> int:
    """Requeue dead letters."""
    agent = agent_id(args.agent)
    entries = _entries(args)
    with connect(args, decode=False) as client:
        moved = _dead_letters(client, agent).requeue(entries)
    print(f"requeued {moved} dead letter{'s' if moved != 1 else ''} of {agent}")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    """Purge dead letters."""
    agent = agent_id(args.agent)
    entries = _entries(args)
    if entries is None and not args.yes:
        raise UsageError("purge deletes all the dead letters: add --yes, or name them")
    with connect(args, decode=False) as client:
        deleted = _dead_letters(client, agent).purge(entries)
    print(f"purged {deleted} dead letter{'s' if deleted != 1 else ''} of {agent}")
    return 0


def _payload(letter: DeadLetter) -> str:
    if letter.message is None:
        return _output.one_line(letter.envelope, 60)
    return _output.one_line(_output.dumps(letter.message.payload), 60)


def _json(letter: DeadLetter) -> Any:
    return {
        "id": letter.id, "error": letter.error, "attempts": letter.attempts,
        "consumer": letter.consumer, "entry_id": letter.entry_id,
        "failed_at": letter.failed_at, "envelope": letter.envelope,
        "message": None if letter.message is None else letter.message.model_dump(mode="json"),
    }
