"""Two agents say hello to each other.

Run it as is: it uses $MAS_REDIS_URL when set, or starts a private redis-server.

    python examples/hello.py
"""

import os
import threading

from mas_sync import Agent, AgentMessage
from mas_sync.testing import local_redis

done = threading.Event()


class Greeter(Agent):
    def on_message(self, message: AgentMessage) -> None:
        # Runs in one of the agent's worker threads.
        print(f"{self.id} got {message.payload} from {message.sender_id}")
        if message.payload.get("greeting") == "hello":
            self.send(message.sender_id, {"greeting": "hello back"})
        else:
            done.set()


with local_redis(os.environ.get("MAS_REDIS_URL")) as url:
    with Greeter("alice", redis_url=url) as alice, Greeter("bob", redis_url=url):
        alice.send("bob", {"greeting": "hello"})
        if not done.wait(5):
            raise SystemExit("no answer within 5 s")
print("both agents stopped")
