"""A system check (``manage.py check``) of the ``MAS_*`` settings."""

from __future__ import annotations

from typing import Any, List

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import _settings
from ._runtime import mas


def check_settings(app_configs: Any = None, **kwargs: Any) -> List[checks.CheckMessage]:
    """Errors for ``MAS_*`` settings that cannot be used, before any agent starts."""
    try:
        _settings.build_process_agents(mas.declared()).specs()
    except ImproperlyConfigured as exc:
        return [
            checks.Error(
                str(exc),
                hint="See the MAS_* settings in the Integrations section of mas_sync's README.",
                id="mas_sync.E001",
            )
        ]
    return []
