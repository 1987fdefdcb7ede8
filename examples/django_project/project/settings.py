"""Settings of the example project: the MAS_* settings are at the end."""

import os

SECRET_KEY = "example-project-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "mas_sync.contrib.django",
    "summaries",
]
MIDDLEWARE = []
ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
DATABASES = {}
USE_TZ = True

# mas_sync
MAS_REDIS_URL = os.environ.get("MAS_REDIS_URL", "redis://localhost:6379")
# Agents declared in settings; summaries/agents.py declares one more in code.
MAS_AGENTS = {
    "summarizer": {
        "CLASS": "summaries.agents.Summarizer",
        "CAPABILITIES": ["nlp"],
    },
}
# Off: the agents run in `python manage.py runagents`. On: in each web process.
MAS_START_IN_PROCESS = os.environ.get("MAS_START_IN_PROCESS") == "1"
