"""The example's agents: one declared in settings (MAS_AGENTS), one in code."""

import os

from mas_sync import Agent, AgentMessage
from mas_sync.contrib.django import mas


class Summarizer(Agent):
    """Declared in settings.MAS_AGENTS; runs in worker threads of its agent."""

    def on_message(self, message: AgentMessage) -> None:
        if message.expects_reply:
            words = str(message.payload.get("text", "")).split()
            message.reply({"summary": " ".join(words[:3]), "words": len(words), "pid": os.getpid()})


@mas.agent("echo", capabilities=["echo"])
class Echo(Agent):
    """Declared in code."""

    def on_message(self, message: AgentMessage) -> None:
        if message.expects_reply:
            message.reply({"echo": message.payload, "pid": os.getpid()})
