"""Django integration: add ``"mas_sync.contrib.django"`` to ``INSTALLED_APPS``.

``pip install mas_sync[django]``. Settings (all optional):

``MAS_REDIS_URL``
    Where Redis is (default ``redis://localhost:6379``).
``MAS_AGENTS``
    The agents, by name: a dotted class path, or a dict with ``CLASS`` and
    optionally ``CAPABILITIES``, ``ID_FORMAT``, ``OPTIONS``. Agents may also be
    declared in code, with ``mas.agent(name, cls)``.
``MAS_AGENT_ID_FORMAT``
    How ids are made of names: ``{name}``, ``{host}``, ``{pid}`` (default
    ``{name}-{host}-{pid}``).
``MAS_AGENT_OPTIONS``
    Keyword arguments for every agent and the client.
``MAS_CLIENT_NAME``
    Name of the client agent that sends for views (default ``web``).
``MAS_REQUEST_TIMEOUT``, ``MAS_STOP_TIMEOUT``
    Seconds (defaults 10 and 5).
``MAS_START_IN_PROCESS``
    False (default): agents run only where you start them, typically in
    ``python manage.py runagents``. True: they also run in each web process,
    started on its first request (in ``runserver``'s serving process, at once
    from ``AppConfig.ready()``), once per process id.

``manage.py check`` reports a setting that cannot be used (``mas_sync.E001``):
an unknown Redis URL scheme, an option that the agent's class does not take,
and the rest.

In views, ``from mas_sync.contrib.django import mas``: ``mas.find(name)`` gives
the ids of the agents declared as ``name``, wherever they run, and
``mas.request(agent_id, payload)`` asks one, through this process's client
agent. With ``MAS_START_IN_PROCESS`` False, ``mas.get(name)`` starts no agent
outside ``runagents``: it raises ``AgentNotRunningError``.
"""

from ._runtime import MAS, mas

__all__ = ["MAS", "mas"]
