"""The Django app of mas_sync (``INSTALLED_APPS = [..., "mas_sync.contrib.django"]``)."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class MASConfig(AppConfig):
    """Connects the receivers and, when asked, starts the agents in this process."""

    name = "mas_sync.contrib.django"
    label = "mas_sync"
    verbose_name = "mas_sync agents"

    def ready(self) -> None:
        """Runs in the thread that sets Django up, in every process and command.

        Django may call it more than once; each step is idempotent. Agents
        start here only with ``MAS_START_IN_PROCESS`` and only in
        ``runserver``'s serving process; elsewhere they start on a process's
        first request, or in ``manage.py runagents``.
        """
        from . import _checks, _runtime

        checks.register(_checks.check_settings, "mas_sync")
        _runtime.connect_signals()
        _runtime.start_if_serving_process()
