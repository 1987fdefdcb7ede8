"""A few busy agents and the live dashboard that shows them.

Run it as is: it uses $MAS_REDIS_URL when set, or starts a private redis-server;
then open the printed URL. Ctrl-C stops it.

    python examples/dashboard_demo.py [--port 8765] [--allow-actions]

With ``--screenshot PATH`` it instead waits for the page to fill, saves a
screenshot taken by a headless ``chromium`` (Debian's package), and stops
(that is how README's ``examples/dashboard.png`` is made).
"""

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

from mas_sync import Agent, AgentMessage
from mas_sync._dashboard import DashboardServer
from mas_sync.testing import local_redis, wait_until

FAST = dict(heartbeat_interval=1.0, heartbeat_ttl=3.0)

# An agent in a process of its own, killed below: it never deregisters, and
# turns STALE when its heartbeat key expires.
DOOMED = """
import sys, threading
from mas_sync import Agent
agent = Agent("legacy-importer", redis_url=sys.argv[1], capabilities=["import"],
              heartbeat_interval=1.0, heartbeat_ttl=2.0)
agent.start()
print("started", flush=True)
threading.Event().wait()
"""


class Solver(Agent):
    """Answers sums, and keeps how many it solved in its state."""

    def on_message(self, message: AgentMessage) -> dict:
        total = sum(message.payload.get("numbers", []))
        solved = int(self.state.get("solved", 0)) + 1
        self.update_state({"solved": solved, "last_total": total})
        return {"total": total}


class Billing(Agent):
    """A reliable agent that refuses negative amounts (they end as dead letters)."""

    def on_message(self, message: AgentMessage) -> None:
        if message.payload.get("amount", 0) < 0:
            raise ValueError(f"negative amount {message.payload['amount']}")
        self.update_state({"invoiced": int(self.state.get("invoiced", 0)) + 1})


class Planner(Agent):
    def get_metadata(self) -> dict:
        return {"version": "1.4", "region": "eu-west"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--allow-actions", action="store_true")
    parser.add_argument("--screenshot", metavar="PATH", help="save a screenshot and stop")
    args = parser.parse_args()
    stop = threading.Event()
    with local_redis(os.environ.get("MAS_REDIS_URL")) as url:
        agents = [
            Planner("planner", redis_url=url, capabilities=["planning"], **FAST),
            Solver("solver-1", redis_url=url, capabilities=["math"], **FAST),
            Solver("solver-2", redis_url=url, capabilities=["math", "stats"], **FAST),
            Billing("billing", redis_url=url, capabilities=["invoices"], delivery="reliable",
                    instance="a", max_attempts=2, retry_delay=0.05, **FAST),
            Billing("billing", redis_url=url, capabilities=["invoices"], delivery="reliable",
                    instance="b", max_attempts=2, retry_delay=0.05, **FAST),
        ]
        for agent in agents:
            agent.start()
        doomed = subprocess.Popen([sys.executable, "-c", DOOMED, url], stdout=subprocess.PIPE, text=True)
        doomed.stdout.readline()
        doomed.kill()  # no clean stop: its registration stays
        doomed.wait()
        planner = agents[0]

        def work() -> None:
            n = 0
            while not stop.wait(0.15):
                n += 1
                try:
                    planner.request(f"solver-{1 + n % 2}", {"numbers": [n, n + 1, n + 2]}, timeout=2)
                    planner.send("billing", {"order": n, "amount": -5 if n % 15 == 0 else 20})
                except Exception as exc:  # noqa: BLE001 - a demo carries on
                    print(f"planner: {exc}", file=sys.stderr)

        worker = threading.Thread(target=work, name="demo-planner", daemon=True)
        worker.start()
        allow = args.allow_actions or bool(args.screenshot)
        server = DashboardServer(url, port=args.port, allow_actions=allow).start()
        try:
            if args.screenshot:
                # The tail starts at the first request for it: some messages, then the page.
                urllib.request.urlopen(server.url + "api/tail", timeout=10).close()
                take_screenshot(server.url + "#agent=billing", args.screenshot, url)
            else:
                print(f"dashboard on {server.url} (Ctrl-C stops)", flush=True)
                try:
                    threading.Event().wait()
                except KeyboardInterrupt:
                    pass
        finally:
            stop.set()
            worker.join(5)
            server.stop()
            for agent in agents:
                agent.stop()
    return 0


def take_screenshot(page: str, path: str, redis_url: str) -> None:
    """Wait until the page has something to show, then let headless chromium take it."""
    import redis

    client = redis.Redis.from_url(redis_url)
    # Some dead letters, and the killed agent's heartbeat gone.
    wait_until(lambda: client.xlen("agent.dlq:billing") >= 2, 30, 0.1, "dead letters")
    wait_until(lambda: not client.exists("agent:legacy-importer:heartbeat"), 10, 0.1, "stale")
    client.close()
    time.sleep(1.5)  # a demo: let the rates settle over one more heartbeat
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium on PATH")
    profile = os.path.join(os.path.dirname(os.path.abspath(path)), ".chromium-profile")
    subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--window-size=1280,860", "--virtual-time-budget=4000",
         f"--screenshot={os.path.abspath(path)}", page],
        check=True, capture_output=True, timeout=60,
    )
    shutil.rmtree(profile, ignore_errors=True)
    print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
