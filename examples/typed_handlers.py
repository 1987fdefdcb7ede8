"""Route messages by action to methods, with payloads validated by pydantic.

Run it as is: it uses $MAS_REDIS_URL when set, or starts a private redis-server.

    python examples/typed_handlers.py
"""

import os

from pydantic import BaseModel

from mas_sync import Agent, AgentMessage, RequestError, handler
from mas_sync.testing import local_redis


class Translate(BaseModel):
    text: str
    target: str = "fr"


class Chat(BaseModel):
    text: str


class Assistant(Agent):
    @handler("translate")
    def translate(self, message: AgentMessage, body: Translate) -> dict:
        # Returning a dict answers a request.
        return {"translation": f"[{body.target}] {body.text}"}

    @handler("chat")
    def chat(self, message: AgentMessage, body: Chat) -> dict:
        return {"response": f"You said: {body.text}"}

    def on_message(self, message: AgentMessage) -> dict:
        # Every action without a handler lands here.
        return {"error": f"unknown action {message.payload.get('action')!r}"}


with local_redis(os.environ.get("MAS_REDIS_URL")) as url:
    with Assistant("assistant", redis_url=url), Agent("user", redis_url=url) as user:
        print(user.request("assistant", {"action": "translate", "text": "hello"}).payload)
        print(user.request("assistant", {"action": "chat", "text": "hi"}).payload)
        print(user.request("assistant", {"action": "sing"}).payload)
        try:
            user.request("assistant", {"action": "chat"})  # no text
        except RequestError as exc:
            print("refused:", exc.kind, [err["loc"][0] for err in exc.details])
