"""The transport seam: every message an agent sends or receives passes through its Transport."""

from __future__ import annotations

import json
import threading
from typing import Any, List, Tuple

import pytest

from mas_sync import Agent, AgentMessage
from mas_sync._pubsub import PubSubTransport
from mas_sync._run import AgentRun
from mas_sync._streams import StreamTransport
from mas_sync._transport import Transport
from mas_sync.testing import wait_until


class Recording(PubSubTransport):
    """The pub/sub transport, keeping what it sends and what it hands to its run."""

    runs: List["Recording"] = []

    def __init__(self, client: Any, url: str, agent_id: str, events: Any, *args: Any) -> None:
        self.agent_id = agent_id
        self.sent: List[Tuple[str, str]] = []
        self.received: List[bytes] = []
        self.lock = threading.Lock()
        outer = self

        class Events:
            def __getattr__(self, name: str) -> Any:
                return getattr(events, name)

            def received(self, data: bytes, receipt: Any = None) -> None:
                with outer.lock:
                    outer.received.append(data)
                events.received(data, receipt)

        super().__init__(client, url, agent_id, Events(), *args)
        Recording.runs.append(self)

    def send(self, batch: Any, direct: Any = False) -> Any:
        refusals = super().send(batch, direct)
        with self.lock:
            self.sent.extend(batch)
        return refusals


class Echo(Agent):
    def on_message(self, message: AgentMessage) -> Any:
        if message.expects_reply:
            return {"echo": message.payload}
        return None


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> List[Recording]:
    Recording.runs = []
    monkeypatch.setattr(AgentRun, "transport_factory", Recording)
    return Recording.runs


def test_the_run_knows_its_transport_only_through_the_interface() -> None:
    # Every method the run calls on a transport is part of the interface.
    interface = {name for name in vars(Transport) if not name.startswith("_")}
    assert interface == {"send", "start", "receiving", "moved", "stop", "close", "threads"}
    for cls in (PubSubTransport, StreamTransport):
        for name in interface:
            assert callable(getattr(cls, name)) or isinstance(getattr(cls, name), property), name


def test_sends_and_receipts_all_pass_through_the_transport(make_agent, recording) -> None:
    echo = make_agent("echo", cls=Echo)
    asker = make_agent("asker")
    transports = {t.agent_id: t for t in recording}
    assert set(transports) == {"echo", "asker"}

    asker.send("echo", {"n": 1})
    asker.send_many([("echo", {"n": 2}), ("echo", {"n": 3})])
    reply = asker.request("echo", {"n": 4}, timeout=5)
    assert reply.payload == {"echo": {"n": 4}}
    wait_until(lambda: echo.stats.handled == 4, 5)

    sent = [(target, json.loads(data)) for target, data in transports["asker"].sent]
    assert [target for target, _ in sent] == ["echo"] * 4
    assert [m["payload"].get("n") for _, m in sent] == [1, 2, 3, 4]
    # What the echo agent received is exactly what the asker's transport sent,
    # and the reply went back the same way.
    got = [json.loads(data) for data in transports["echo"].received]
    assert [m["message_id"] for m in got] == [m["message_id"] for _, m in sent]
    back = transports["echo"].sent
    assert len(back) == 1 and back[0][0] == "asker"
    assert [json.loads(d)["message_id"] for d in transports["asker"].received] == [
        json.loads(back[0][1])["message_id"]
    ]
    assert echo.stats.received == 4 and asker.stats.received == 1
