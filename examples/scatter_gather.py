"""Many requests at once: futures, scatter-gather over a capability, and handler time limits.

Run it as is: it uses $MAS_REDIS_URL when set, or starts a private redis-server.

    python examples/scatter_gather.py
"""

import concurrent.futures
import os
import time

from pydantic import BaseModel

from mas_sync import Agent, AgentMessage, RequestError, handler
from mas_sync.testing import local_redis


class Quote(BaseModel):
    item: str


class Supplier(Agent):
    """Quotes a price; supplier-3 is slow, past its handler's time limit."""

    @handler("quote", timeout=0.5)
    def quote(self, message: AgentMessage, body: Quote) -> dict:
        if self.id == "supplier-3":
            time.sleep(1.0)  # the requester hears of it at 0.5 s, not at its own timeout
        return {"item": body.item, "price": 10 + int(self.id[-1])}


class Silent(Agent):
    """Registered with the capability, but never answers."""

    def on_message(self, message: AgentMessage) -> None:
        pass


with local_redis(os.environ.get("MAS_REDIS_URL")) as url:
    suppliers = [Supplier(f"supplier-{n}", ["quotes"], redis_url=url) for n in range(1, 5)]
    suppliers.append(Silent("supplier-9", ["quotes"], redis_url=url))
    buyer = Agent("buyer", redis_url=url)
    for agent in [*suppliers, buyer]:
        agent.start()
    try:
        # Futures: start several requests, then wait for them together.
        futures = {
            buyer.request_future(f"supplier-{n}", {"action": "quote", "item": "bolt"}, timeout=2):
            n for n in (1, 2)
        }
        for future in concurrent.futures.as_completed(futures):
            print(f"future of supplier-{futures[future]}:", future.result().payload)

        # Scatter-gather: every agent with the capability, one call, one timeout.
        began = time.monotonic()
        result = buyer.request_many("quotes", {"action": "quote", "item": "nut"}, timeout=1.0)
        print(f"asked {list(result.targets)} in {time.monotonic() - began:.1f} s")
        print("prices:", {agent: reply.payload["price"] for agent, reply in result.replies.items()})
        print("timed out:", result.timed_out)
        for agent in result.failed:
            error = result.errors[agent]
            kind = error.kind if isinstance(error, RequestError) else type(error).__name__
            print(f"failed: {agent} ({kind})")
    finally:
        for agent in [buyer, *suppliers]:
            agent.stop()
