"""Ask an agent and wait for its answer, as a Flask view or a script would.

Run it as is: it uses $MAS_REDIS_URL when set, or starts a private redis-server.

    python examples/request_reply.py
"""

import os

from mas_sync import Agent, AgentMessage, RequestTimeout
from mas_sync.testing import local_redis


class Summarizer(Agent):
    def on_message(self, message: AgentMessage) -> None:
        if message.expects_reply:
            words = message.payload["text"].split()
            message.reply({"summary": " ".join(words[:2]) + " ...", "words": len(words)})


with local_redis(os.environ.get("MAS_REDIS_URL")) as url:
    with Summarizer("nlp", capabilities=["nlp"], redis_url=url), Agent(
        "web", redis_url=url
    ) as web:
        # What a request handler of a web app does: ask, block until the reply.
        reply = web.request("nlp", {"text": "mas_sync is a blocking library"}, timeout=5)
        print("flask-style view got:", reply.payload)
        try:
            web.request("nobody-home", {"text": "hello?"}, timeout=0.5)
        except RequestTimeout as exc:  # also a TimeoutError
            print("no answer:", exc)
