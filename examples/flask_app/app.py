"""A Flask app whose agents run in each process that serves it.

It needs a Redis: set MAS_REDIS_URL (default redis://localhost:6379). The app
is made by the factory ``create_app``. With the development server and its
reloader (agents start in the serving process only, on its first request):

    MAS_REDIS_URL=redis://localhost:6379/0 flask --app examples/flask_app/app.py:create_app run --reload
    curl 'http://127.0.0.1:5000/summarize?text=agents+in+a+flask+app'

Under gunicorn (``pip install gunicorn``), two workers forked from a preloaded
app, each starting agents of its own when it boots (see gunicorn.conf.py
beside this file):

    MAS_REDIS_URL=redis://localhost:6379/0 gunicorn --preload -w 2 -b 127.0.0.1:8000 \\
        -c examples/flask_app/gunicorn.conf.py --chdir examples/flask_app 'app:create_app()'
    curl http://127.0.0.1:8000/agents
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from flask import Flask, jsonify, request

from mas_sync import Agent, AgentMessage, RequestTimeout
from mas_sync.contrib.flask import MAS

mas = MAS()


@mas.agent("summarizer", capabilities=["nlp"])
class Summarizer(Agent):
    """Answers requests in its worker threads, in every serving process."""

    def on_message(self, message: AgentMessage) -> None:
        if message.expects_reply:
            words = str(message.payload.get("text", "")).split()
            message.reply({"summary": " ".join(words[:3]), "words": len(words), "pid": os.getpid()})


@mas.agent("jobs", id_format="{name}", delivery="reliable")
class Jobs(Agent):
    """One agent whose instances are the serving processes: each job goes to one of them.

    Its inbox is the stream ``agent.stream:jobs``; a job sent while every
    worker restarts waits there.
    """

    def on_message(self, message: AgentMessage) -> None:
        done = {"job": message.payload.get("job"), "pid": os.getpid()}
        if message.expects_reply:
            message.reply(done)
        elif isinstance(message.payload.get("report_to"), str):
            self.send(message.payload["report_to"], done)


def create_app(config: Optional[Dict[str, Any]] = None) -> Flask:
    """The application factory; ``config`` overrides the defaults."""
    app = Flask(__name__)
    app.config["MAS_REDIS_URL"] = os.environ.get("MAS_REDIS_URL", "redis://localhost:6379")
    app.config.update(config or {})
    mas.init_app(app)

    @app.get("/summarize")
    def summarize() -> Any:
        # Ask this process's summarizer and wait for its answer.
        target = mas.get("summarizer").id
        try:
            reply = mas.request(target, {"text": request.args.get("text", "")}, timeout=5)
        except RequestTimeout:
            return jsonify(error=f"{target} did not answer"), 504
        return jsonify({**reply.payload, "answered_by": reply.sender_id})

    @app.get("/agents")
    def agents() -> Any:
        # Every summarizer on this Redis, whichever process runs it.
        return jsonify(mas.find("summarizer"))

    return app
