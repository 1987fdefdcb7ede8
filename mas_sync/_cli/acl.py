"""``mas_sync acl``: the least-privilege Redis users of agents and of the service."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``acl``."""
    acl = commands.add_parser(
        "acl", parents=[common],
        help="print the least-privilege Redis users (ACL SETUSER lines) of agents and the service",
        description="Print one 'ACL SETUSER NAME reset resetchannels on ...' line per user, for"
        " redis-cli (or, with --acl-file, the 'user NAME reset resetchannels on ...' lines of"
        " an ACL file). Needs Redis 7.",
    )
    acl.add_argument("agent_ids", nargs="*", metavar="AGENT_ID", help="an agent's id")
    acl.add_argument("--service", action="store_true",
                     help="also print the user of the registry service (MASService)")
    acl.add_argument("--user", help="the user name (one user only; default: the agent id,"
                     " or mas-service)")
    secret = acl.add_mutually_exclusive_group()
    secret.add_argument("--password-env", metavar="VAR",
                        help="read the password from environment variable VAR; the line"
                        " holds its SHA-256, never the password")
    secret.add_argument("--nopass", action="store_true",
                        help="any password logs in (for tests only)")
    acl.add_argument("--acl-file", action="store_true",
                     help="print the lines of an ACL file (aclfile in redis.conf) instead")
    acl.set_defaults(run=lambda args: run(acl, args))


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Print the ACL lines that ``args`` asks for; argument errors exit with status 2."""
    from .._acl import acl_rules, service_acl_rules

    count = len(args.agent_ids) + (1 if args.service else 0)
    if count == 0:
        parser.error("acl: give at least one AGENT_ID, or --service")
    if args.user is not None and count > 1:
        parser.error("acl: --user names one user; give one AGENT_ID or --service alone")
    password = None
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if not password:
            parser.error(f"acl: environment variable {args.password_env} is not set or empty")
    lines: List[str] = []
    try:
        for agent_id in args.agent_ids:
            lines += acl_rules(agent_id, user=args.user, password=password,
                               nopass=args.nopass, acl_file=args.acl_file)
        if args.service:
            lines += service_acl_rules(user=args.user or "mas-service", password=password,
                                       nopass=args.nopass, acl_file=args.acl_file)
    except (TypeError, ValueError) as exc:
        parser.error(f"acl: {exc}")
    if args.nopass:
        print("warning: nopass lets anyone who can reach Redis log in as these users",
              file=sys.stderr)
    elif password is None:
        print("note: these users have no password, so nobody can log in as them yet;"
              " add one (ACL SETUSER NAME >password) or use --password-env",
              file=sys.stderr)
    for line in lines:
        print(line)
    return 0
