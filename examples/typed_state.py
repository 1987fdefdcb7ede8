"""Typed state survives a restart, every field with its type.

Run it as is: it uses $MAS_REDIS_URL when set, or starts a private redis-server.

    python examples/typed_state.py
"""

import datetime
import os
from typing import List, Optional

from pydantic import BaseModel, Field

from mas_sync import Agent
from mas_sync.testing import local_redis


class CounterState(BaseModel):
    counter: int = 0
    ratio: float = 0.0
    history: List[int] = Field(default_factory=list)
    last_run: Optional[datetime.datetime] = None


with local_redis(os.environ.get("MAS_REDIS_URL")) as url:
    with Agent("counter", redis_url=url, state_model=CounterState) as agent:
        agent.update_state(
            {
                "counter": agent.state.counter + 1,
                "ratio": 0.5,
                "history": agent.state.history + [agent.state.counter + 1],
                "last_run": datetime.datetime.now(datetime.timezone.utc),
            }
        )
        print("before restart:", agent.state.model_dump())

    # A new agent with the same id finds the state again.
    with Agent("counter", redis_url=url, state_model=CounterState) as again:
        print("after restart: ", again.state.model_dump())
        assert again.state.history[-1] == again.state.counter
