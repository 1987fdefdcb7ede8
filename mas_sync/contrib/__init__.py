"""Integrations of mas_sync with web frameworks.

- :mod:`mas_sync.contrib.flask`: the ``MAS`` extension (``pip install mas_sync[flask]``);
- :mod:`mas_sync.contrib.django`: a Django app with the ``runagents`` command
  (``pip install mas_sync[django]``).

Both run the agents an application declares through :class:`ProcessAgents`,
which starts them at most once per process and again in a process whose id
differs (a worker forked by a pre-fork server). Declared agents publish their
declared name in their registration metadata (:data:`NAME_KEY`), so that
``find(name)`` gets their ids wherever they run. This package imports neither
Flask nor Django; each integration imports its framework itself.
"""

from ._names import DEFAULT_ID_FORMAT, NAME_KEY
from ._process import ProcessAgents
from ._spec import AgentSpec

__all__ = ["DEFAULT_ID_FORMAT", "NAME_KEY", "AgentSpec", "ProcessAgents"]
