#!/usr/bin/env python
"""The example Django project's manage.py.

It needs a Redis: set MAS_REDIS_URL (default redis://localhost:6379). Run the
agents in a process of their own, and the site beside them:

    cd examples/django_project
    MAS_REDIS_URL=redis://localhost:6379/0 python manage.py runagents
    MAS_REDIS_URL=redis://localhost:6379/0 python manage.py runserver
    curl 'http://127.0.0.1:8000/summarize?text=agents+in+a+django+project'

Or run the agents inside the web process instead (started once, in the
serving process only, never in the autoreloader's watcher):

    MAS_REDIS_URL=redis://localhost:6379/0 MAS_START_IN_PROCESS=1 python manage.py runserver
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
