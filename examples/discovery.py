"""Agents find each other by capability.

Run it as is: it uses $MAS_REDIS_URL when set, or starts a private redis-server.

    python examples/discovery.py
"""

import os

from mas_sync import Agent
from mas_sync.testing import local_redis


class Translator(Agent):
    def get_metadata(self) -> dict:
        return {"languages": ["en", "fr"], "version": "1.0"}


with local_redis(os.environ.get("MAS_REDIS_URL")) as url:
    agents = [
        Translator("translator", capabilities=["nlp", "translation"], redis_url=url),
        Agent("summarizer", capabilities=["nlp", "text"], redis_url=url),
        Agent("vision", capabilities=["vision"], redis_url=url),
    ]
    for agent in agents:
        agent.start()
    try:
        me = agents[2]
        for found in me.discover(capabilities=["nlp"]):
            print(f"nlp agent {found['id']}: {found['capabilities']} {found['metadata']}")
        print("all active agents:", [a["id"] for a in me.discover()])
    finally:
        for agent in agents:
            agent.stop()
