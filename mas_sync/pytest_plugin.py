"""An alias of :mod:`mas_sync.testing.pytest_plugin`, where the pytest plugin lives.

``import mas_sync.pytest_plugin`` and ``-p mas_sync.pytest_plugin`` give that
very module object (this module replaces itself in ``sys.modules``), so the
plugin is never registered twice under two module objects (nor, see
:func:`~mas_sync.testing.pytest_plugin.pytest_plugin_registered`, under two
names).
"""

import sys

from .testing import pytest_plugin

sys.modules[__name__] = pytest_plugin
