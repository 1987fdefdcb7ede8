"""The command-line tool ``mas_sync`` (also ``python -m mas_sync``), one module per command.

Each command module has ``add_parsers(commands, common)``, which adds its
subcommands (their parsers built with ``parents=[common]``, for
``--redis-url``) and sets ``run`` on them: a function of the parsed arguments
that returns the exit status. :mod:`mas_sync.__main__` builds the parser
from :data:`COMMANDS` and turns errors into one line on stderr.

The helpers shared by the commands are in :mod:`._common` (the Redis URL,
clients, errors) and :mod:`._output` (tables and JSON).
"""

from __future__ import annotations

from . import acl, agents, bench, dashboard, demo, dlq, inspect, messages, prune, service

#: The command modules, in the order ``--help`` lists their commands.
COMMANDS = (agents, inspect, messages, prune, dlq, acl, service, demo, bench, dashboard)
