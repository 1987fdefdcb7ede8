"""A system check (``manage.py check``) of the ``MAS_*`` settings."""

from __future__ import annotations

from typing import Any, List

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import _settings
from ._runtime import mas


def check_settings(app_configs: Any = None, **kwargs: Any) -> List[checks.CheckMessage]:
    """Errors for ``MAS_*`` settings that cannot be used, before any agent starts.

    Covers every value an agent would be built from: the Redis URL's scheme,
    the id format, the timeouts, each entry of ``MAS_AGENTS``, and the names
    in ``MAS_AGENT_OPTIONS`` and in each agent's ``OPTIONS``, compared with
    the signature of the class that takes them.
    """
    try:
        _settings.declared_specs(_settings.build_process_agents(mas.declared()))
    except ImproperlyConfigured as exc:
        return [
            checks.Error(
                str(exc),
                hint="See the MAS_* settings in the Integrations section of mas_sync's README.",
                id="mas_sync.E001",
            )
        ]
    return []
