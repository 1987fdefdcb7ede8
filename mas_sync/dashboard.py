"""The live web dashboard: ``serve()`` runs it, ``make_app()`` is its WSGI app to mount.

See :mod:`mas_sync._dashboard` for the endpoints; ``mas_sync dashboard`` on
the command line calls :func:`serve`.
"""

from ._dashboard import DashboardApp, DashboardServer, make_app, serve

__all__ = ["DashboardApp", "DashboardServer", "make_app", "serve"]
