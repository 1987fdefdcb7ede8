"""The live web dashboard: its JSON endpoints over HTTP, and its page in a real headless Chromium.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (on PATH
as ``chromium`` and ``chromedriver``) and the ``selenium`` package; they are
skipped, saying which is missing, where one is not installed. Selenium is
given the driver's path, so it never runs Selenium Manager (which would
download a driver or a browser).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
import wsgiref.util
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import redis

from mas_sync import Agent, AgentMessage
from mas_sync.dashboard import DashboardServer, make_app
from mas_sync._errors import ListenError
from mas_sync.testing import free_port, wait_until

RELIABLE: Dict[str, Any] = dict(delivery="reliable", retry_delay=0.01, max_attempts=1)
#: Seconds within which the page must show a change (it polls every second).
SHOWN_WITHIN = 3.0


class Failing(Agent):
    """Fails every message while ``failing`` is set; keeps the payloads it handled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing = threading.Event()
        self.failing.set()
        self.handled: List[Dict[str, Any]] = []

    def on_message(self, message: AgentMessage) -> None:
        if self.failing.is_set():
            raise RuntimeError("refused on purpose")
        self.handled.append(message.payload)


# --- fixtures ------------------------------------------------------------------


@pytest.fixture
def dashboard(redis_url: str) -> Iterator[Callable[..., DashboardServer]]:
    """Start dashboard servers on ports of their own; each is stopped at teardown."""
    started: List[DashboardServer] = []

    def start(allow_actions: bool = False, port: int = 0) -> DashboardServer:
        server = DashboardServer(redis_url, port=port, allow_actions=allow_actions).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def chromium() -> Tuple[str, str]:
    """The paths of ``chromium`` and ``chromedriver``; skips where either, or selenium, is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("the browser tests need selenium (pip install -e '.[test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(name for name, path in
                               (("chromium", browser), ("chromedriver", driver)) if path is None)
        pytest.skip(f"no {missing} on PATH: install Debian's chromium and chromium-driver")
    return browser, driver


@pytest.fixture
def browser(chromium: Tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, driven by Selenium; quit at teardown."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Should Selenium Manager ever run, it must not download anything.
    monkeypatch.setenv("SE_OFFLINE", "true")

    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                     f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    # The driver's path given: Selenium Manager does not run (it would download one).
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(15)
        driver.set_script_timeout(10)
        yield driver
    finally:
        driver.quit()


def shot(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot of the page into the test's tmp_path."""
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    return path


def open_page(driver: Any, server: DashboardServer, anchor: str = "") -> None:
    driver.get(server.url + anchor)
    # Drawn once: the header says when it last read Redis.
    wait_until(lambda: driver.find_element("id", "updated").text.startswith("updated"),
               SHOWN_WITHIN, message="the page's first refresh")


def shown(driver: Any, css: str) -> List[Any]:
    """The elements that match ``css`` and are displayed ([] while the page redraws them)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return [e for e in driver.find_elements("css selector", css) if e.is_displayed()]
    except StaleElementReferenceException:
        return []


def text_of(driver: Any, css: str) -> Optional[str]:
    """The text of the first element that matches ``css``; None if none (or redrawn meanwhile)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        found = driver.find_elements("css selector", css)
        return found[0].text if found else None
    except StaleElementReferenceException:
        return None


def click(driver: Any, css: str) -> None:
    """Click the first displayed element that matches ``css``, once the page shows it."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked() -> bool:
        try:
            found = shown(driver, css)
            if found:
                found[0].click()
            return bool(found)
        except StaleElementReferenceException:
            return False

    wait_until(clicked, SHOWN_WITHIN, message=f"a click on {css}")


def attribute_of(driver: Any, css: str, name: str) -> Optional[str]:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        found = shown(driver, css)
        return found[0].get_attribute(name) if found else None
    except StaleElementReferenceException:
        return None


def row_status(driver: Any, agent_id: str) -> Optional[str]:
    return text_of(driver, f'#agents tr[data-agent-id="{agent_id}"] td[data-field="status"]')


# --- the page in a browser --------------------------------------------------------


@pytest.mark.slow
def test_an_agent_started_after_the_page_opened_appears(
    browser: Any, dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = dashboard()
    make_agent("early", capabilities=["text"])
    open_page(browser, server)
    assert row_status(browser, "early") == "ACTIVE"
    make_agent("late", capabilities=["math", "search"])
    wait_until(lambda: row_status(browser, "late") == "ACTIVE", SHOWN_WITHIN,
               message="the new agent on the page")
    row = '#agents tr[data-agent-id="late"]'
    assert text_of(browser, f'{row} td[data-field="capabilities"]').split() == ["math", "search"]
    assert text_of(browser, f'{row} td[data-field="heartbeat"]').endswith("s ago")
    assert text_of(browser, f'{row} td[data-field="delivery"]') == "pubsub"
    assert text_of(browser, f'{row} td[data-field="instances"]') == "1"
    # The rates come with the agent's first write of its counters.
    wait_until(lambda: text_of(browser, f'{row} td[data-field="received"]') == "0.0", SHOWN_WITHIN)
    assert shown(browser, "#banner") == []
    shot(browser, tmp_path, "agents")


@pytest.mark.slow
def test_the_state_shown_changes_after_update_state(
    browser: Any, dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any],
    tmp_path: Path,
) -> None:
    agent = make_agent("keeper")
    agent.update_state({"phase": "one", "items": [1, 2]})
    server = dashboard()
    open_page(browser, server)
    click(browser, '#agents tr[data-agent-id="keeper"] button')
    phase = '#agent-state tr[data-key="phase"] td'
    wait_until(lambda: text_of(browser, phase) == "one", SHOWN_WITHIN, message="the state shown")
    assert text_of(browser, '#agent-state tr[data-key="items"] td') == "[1,2]"
    assert browser.find_element("id", "agent-detail").get_attribute("data-agent-id") == "keeper"
    agent.update_state({"phase": "two"})
    wait_until(lambda: text_of(browser, phase) == "two", SHOWN_WITHIN, message="the new state")
    # Its counters, as it wrote them on its heartbeat.
    wait_until(lambda: text_of(browser, '#agent-counters [data-counter="received"] dd') == "0",
               SHOWN_WITHIN, message="the counters")
    # The selection is in the address: a reload shows the same agent.
    assert browser.current_url.endswith("#agent=keeper")
    browser.refresh()
    wait_until(lambda: text_of(browser, phase) == "two", SHOWN_WITHIN, message="the state after a reload")
    shot(browser, tmp_path, "state")


@pytest.mark.slow
def test_an_agent_that_stopped_without_deregistering_turns_stale(
    browser: Any, dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any],
    r: redis.Redis, tmp_path: Path,
) -> None:
    gone = make_agent("gone")
    make_agent("alive")
    server = dashboard()
    open_page(browser, server)
    wait_until(lambda: row_status(browser, "gone") == "ACTIVE", SHOWN_WITHIN)
    gone._mas_run.heartbeat.stop()  # beats no more, as if killed
    r.delete("agent:gone:heartbeat")
    wait_until(lambda: row_status(browser, "gone") == "STALE", SHOWN_WITHIN, message="STALE shown")
    row = '#agents tr[data-agent-id="gone"]'
    assert text_of(browser, f'{row} td[data-field="heartbeat"]') == "gone"
    assert row_status(browser, "alive") == "ACTIVE"
    # A registry service marks it INACTIVE; the page shows that too.
    r.hset("agent:gone", "status", "INACTIVE")
    wait_until(lambda: row_status(browser, "gone") == "INACTIVE", SHOWN_WITHIN)
    shot(browser, tmp_path, "stale")


@pytest.mark.slow
def test_messages_sent_appear_in_the_tail(
    browser: Any, dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any],
    tmp_path: Path,
) -> None:
    class Echo(Agent):
        def on_message(self, message: AgentMessage) -> Any:
            return {"echo": message.payload}

    make_agent("echo", Echo)
    sender = make_agent("sender")
    server = dashboard()
    open_page(browser, server)
    # The page's first poll started the tail, which subscribes in its thread:
    # probe until it sees a message.
    probes = iter(range(1000))

    def listening() -> bool:
        sender.send("echo", {"probe": next(probes)})
        app = server.app
        return app is not None and app._tail is not None and app._tail.events()[0] > 0

    wait_until(listening, SHOWN_WITHIN, 0.1, message="the tail listening")
    for n in range(3):
        sender.send("echo", {"note": f"hello {n}"})
    assert sender.request("echo", {"ask": "ping"}, timeout=5).payload == {"echo": {"ask": "ping"}}
    items = "#tail li"

    def notes() -> List[Tuple[str, str]]:
        return [(e.get_attribute("data-kind"), e.text) for e in shown(browser, items)
                if "probe" not in e.text]

    wait_until(lambda: len(notes()) == 5, SHOWN_WITHIN, message="the messages in the tail")
    seen = notes()
    # Newest on top: the reply, the request, then the three messages.
    assert [kind for kind, _ in seen] == ["reply", "request", "message", "message", "message"]
    assert "echo → sender" in seen[0][1] and "sender → echo" in seen[1][1]
    assert [("hello %d" % n) in text for n, (_, text) in zip((2, 1, 0), seen[2:])] == [True] * 3
    shot(browser, tmp_path, "tail")


@pytest.mark.slow
def test_dead_letters_are_listed_and_requeued_from_the_page(
    browser: Any, dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any],
    r: redis.Redis, tmp_path: Path,
) -> None:
    worker = make_agent("worker", Failing, **RELIABLE)
    sender = make_agent("sender")
    for n in range(2):
        sender.send("worker", {"n": n})
    wait_until(lambda: r.xlen("agent.dlq:worker") == 2, message="no dead letters")
    server = dashboard(allow_actions=True)
    open_page(browser, server, "#agent=worker")
    rows = "#dead-letters tr[data-dead-letter-id]"
    wait_until(lambda: len(shown(browser, rows)) == 2, SHOWN_WITHIN, message="the dead letters")
    assert "refused on purpose" in (text_of(browser, rows) or "")
    assert text_of(browser, "#dlq-count") == "(2)"
    assert text_of(browser, '#agent-stream tr[data-figure="dead letters"] td') == "2"
    assert browser.find_element("id", "mode").text == "actions allowed"
    browser.execute_script("document.getElementById('dlq-part').scrollIntoView()")
    shot(browser, tmp_path, "dead-letters")
    worker.failing.clear()
    first_id = attribute_of(browser, rows, "data-dead-letter-id")
    click(browser, f'{rows}[data-dead-letter-id="{first_id}"] button[data-action="requeue"]')
    wait_until(lambda: browser.find_element("id", "action-status").text == "Requeued 1 dead letter.",
               SHOWN_WITHIN, message="the requeue's answer")
    wait_until(lambda: worker.handled == [{"n": 0}], 5, message="the requeued message handled")
    wait_until(lambda: len(shown(browser, rows)) == 1, SHOWN_WITHIN)
    # Purge asks first.
    click(browser, "#dlq-purge-all")
    browser.switch_to.alert.accept()
    wait_until(lambda: r.xlen("agent.dlq:worker") == 0, SHOWN_WITHIN, message="purged")
    wait_until(lambda: shown(browser, "#no-dead-letters"), SHOWN_WITHIN)
    assert shown(browser, "#dlq-actions") == []


@pytest.mark.slow
def test_without_actions_the_page_has_no_buttons_for_them(
    browser: Any, dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any],
    r: redis.Redis, tmp_path: Path,
) -> None:
    make_agent("worker", Failing, **RELIABLE)
    make_agent("sender").send("worker", {"n": 1})
    wait_until(lambda: r.xlen("agent.dlq:worker") == 1, message="no dead letter")
    server = dashboard()
    open_page(browser, server, "#agent=worker")
    rows = "#dead-letters tr[data-dead-letter-id]"
    wait_until(lambda: len(shown(browser, rows)) == 1, SHOWN_WITHIN, message="the dead letter")
    assert browser.find_element("id", "mode").text == "read-only"
    assert browser.find_elements("css selector", "#dead-letters button") == []
    assert shown(browser, "[data-action]") == []
    browser.execute_script("document.getElementById('dlq-part').scrollIntoView()")
    shot(browser, tmp_path, "read-only")


@pytest.mark.slow
def test_the_page_keeps_working_after_the_dashboard_restarts(
    browser: Any, dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any],
    tmp_path: Path,
) -> None:
    port = free_port()
    first = dashboard(port=port)
    make_agent("before")
    open_page(browser, first)
    wait_until(lambda: row_status(browser, "before") == "ACTIVE", SHOWN_WITHIN)
    first.stop()
    wait_until(lambda: "does not answer" in (text_of(browser, "#banner") or ""), SHOWN_WITHIN,
               message="the page says the dashboard is gone")
    shot(browser, tmp_path, "server-gone")
    make_agent("after")
    dashboard(port=port)
    wait_until(lambda: row_status(browser, "after") == "ACTIVE", SHOWN_WITHIN,
               message="the page after the restart")
    wait_until(lambda: shown(browser, "#banner") == [], SHOWN_WITHIN)
    assert row_status(browser, "before") == "ACTIVE"


# --- the endpoints, without a browser -------------------------------------------------


def call(url: str, method: str = "GET", body: Optional[bytes] = None,
         headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any, Any]:
    """Status, decoded JSON body (or bytes) and headers of one request."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, data, head = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, data, head = exc.code, exc.read(), exc.headers
    if head.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(data), head
    return status, data, head


def dead_letters(make_agent: Callable[..., Any], r: redis.Redis, count: int) -> Failing:
    worker = make_agent("worker", Failing, **RELIABLE)
    sender = make_agent("sender")
    for n in range(count):
        sender.send("worker", {"n": n})
    # A dead letter is written, then its entry acknowledged.
    wait_until(lambda: r.xlen("agent.dlq:worker") == count
               and r.xpending("agent.stream:worker", "agents")["pending"] == 0,
               message="no dead letters")
    return worker


def test_the_api_lists_agents_and_shows_one(
    dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any], r: redis.Redis,
) -> None:
    agent = make_agent("alpha", capabilities=["math"])
    agent.update_state({"phase": "one", "items": [1]})
    dead_letters(make_agent, r, 1)
    server = dashboard()
    status, body, _ = call(server.url + "api/agents")
    assert status == 200 and body["actions"] is False
    assert [(a["id"], a["shown_status"]) for a in body["agents"]] == [
        ("alpha", "ACTIVE"), ("sender", "ACTIVE"), ("worker", "ACTIVE")]
    status, body, _ = call(server.url + "api/agents/alpha")
    assert status == 200
    assert body["state"] == {"phase": "one", "items": [1]}
    assert body["stream"] is None and body["dead_letters"] is None
    status, body, _ = call(server.url + "api/agents/worker")
    assert body["stream"]["dead_letters"] == 1 and body["stream"]["length"] == 1
    lag_known = int(r.info("server")["redis_version"].split(".")[0]) >= 7  # XINFO's lag
    assert body["stream"]["pending"] == 0 and body["stream"]["lag"] == (0 if lag_known else None)
    assert [c["name"] for c in body["stream"]["consumers"]] == [body["dead_letters"][0]["consumer"]]
    assert body["dead_letters"][0]["error"].startswith("RuntimeError")
    status, body, _ = call(server.url + "api/dlq/worker")
    assert status == 200 and body["count"] == 1 and body["dead_letters"][0]["sender"] == "sender"
    status, page, head = call(server.url)
    assert status == 200 and b"<title>mas_sync dashboard</title>" in page
    assert "default-src 'none'" in head["Content-Security-Policy"]
    # Nothing from the network: no src or href to another host.
    assert b"http://" not in page and b"https://" not in page and b"//" not in page.split(b"<script>")[0]


def test_bad_ids_and_paths_get_json_errors(dashboard: Callable[..., DashboardServer]) -> None:
    server = dashboard(allow_actions=True)
    for path, expected in [
        ("api/agents/no:pe", 400), ("api/agents/%FF", 400), ("api/dlq/a%20b", 400),
        ("api/agents/nobody", 404), ("api/dlq/nobody", 404), ("api/nothing", 404),
        ("api/tail?after=x", 400), ("api/tail?after=-1", 400), ("api/dlq/x?count=0", 400),
    ]:
        status, body, _ = call(server.url + path)
        assert (path, status) == (path, expected)
        assert isinstance(body, dict) and body["error"], path
    status, body, head = call(server.url + "api/agents", method="POST", body=b"{}")
    assert status == 405 and "GET" in head["Allow"]
    status, body, _ = call(server.url + "api/dlq/nobody", method="DELETE")
    assert status == 405
    status, body, _ = call(server.url + "api/dlq/x/requeue", method="POST", body=b"[1]",
                           headers={"Content-Type": "application/json"})
    assert status == 400 and "object" in body["error"]
    status, body, _ = call(server.url + "api/dlq/x/purge", method="POST", body=b'{"ids": ["nope"]}',
                           headers={"Content-Type": "application/json"})
    assert status == 400 and "ids" in body["error"]


def test_actions_answer_403_unless_allowed(
    dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any], r: redis.Redis,
) -> None:
    dead_letters(make_agent, r, 2)
    server = dashboard()
    for action in ("requeue", "purge"):
        status, body, _ = call(server.url + f"api/dlq/worker/{action}", method="POST", body=b"{}")
        assert status == 403 and "not allowed" in body["error"]
    assert r.xlen("agent.dlq:worker") == 2


def test_actions_from_another_origin_are_refused(
    dashboard: Callable[..., DashboardServer], make_agent: Callable[..., Any], r: redis.Redis,
) -> None:
    worker = dead_letters(make_agent, r, 3)
    server = dashboard(allow_actions=True)
    url = server.url + "api/dlq/worker/purge"
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": server.url.rstrip("/").replace("127.0.0.1", "localhost")},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        status, body, _ = call(url, method="POST", body=b"{}", headers=headers)
        assert status == 403 and "another" in body["error"], headers
    assert r.xlen("agent.dlq:worker") == 3
    # A name that is not this machine's (DNS rebinding) gets nothing at all.
    status, body, _ = call(server.url + "api/agents", headers={"Host": "evil.example"})
    assert status == 403
    # The page's own origin, and a client that sends none (curl), may act.
    first = worker.dead_letters()[0].id
    worker.failing.clear()
    status, body, _ = call(server.url + "api/dlq/worker/requeue", method="POST",
                           body=json.dumps({"ids": [first]}).encode(),
                           headers={"Origin": server.url.rstrip("/"), "Sec-Fetch-Site": "same-origin",
                                    "Content-Type": "application/json"})
    assert (status, body) == (200, {"agent_id": "worker", "requeued": 1})
    wait_until(lambda: worker.handled == [{"n": 0}], 5)
    status, body, _ = call(url, method="POST")
    assert (status, body) == (200, {"agent_id": "worker", "purged": 2})
    assert r.xlen("agent.dlq:worker") == 0


def test_make_app_mounts_under_a_prefix_and_answers_a_redis_failure_with_503(redis_url: str) -> None:
    app = make_app(redis_url)
    try:
        answers: List[Any] = []

        def start_response(status: str, headers: List[Tuple[str, str]]) -> None:
            answers.append((status, dict(headers)))

        environ: Dict[str, Any] = {"SCRIPT_NAME": "/ops/dash", "PATH_INFO": ""}
        wsgiref.util.setup_testing_defaults(environ)
        app(environ, start_response)
        assert answers[-1][0].startswith("308") and answers[-1][1]["Location"] == "/ops/dash/"
        environ["PATH_INFO"] = "/api/agents"
        body = b"".join(app(environ, start_response))
        assert answers[-1][0].startswith("200") and json.loads(body)["agents"] == []
    finally:
        app.close()
    down = make_app("redis://127.0.0.1:1/0")
    try:
        environ = {"PATH_INFO": "/api/agents"}
        wsgiref.util.setup_testing_defaults(environ)
        body = b"".join(down(environ, start_response))
        assert answers[-1][0].startswith("503") and "Redis" in json.loads(body)["error"]
    finally:
        down.close()
    with pytest.raises(ValueError):
        make_app("http://nowhere")
    with pytest.raises(TypeError):
        make_app(redis_url, allow_actions="yes")  # type: ignore[arg-type]


def test_flask_mounts_the_app_under_a_prefix(make_agent: Callable[..., Any], redis_url: str) -> None:
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    make_agent("alpha")
    dashboard_app = make_app(redis_url)
    site = Flask(__name__)
    site.wsgi_app = DispatcherMiddleware(site.wsgi_app, {"/ops/dashboard": dashboard_app})  # type: ignore[method-assign]
    try:
        client = site.test_client()
        answer = client.get("/ops/dashboard")
        assert answer.status_code == 308 and answer.headers["Location"].endswith("/ops/dashboard/")
        assert b"mas_sync dashboard" in client.get("/ops/dashboard/").data
        assert [a["id"] for a in client.get("/ops/dashboard/api/agents").get_json()["agents"]] == ["alpha"]
        assert client.get("/ops/dashboard/api/agents/nobody").status_code == 404
    finally:
        dashboard_app.close()


@pytest.mark.slow
def test_the_demo_makes_the_readme_screenshot(
    chromium: Tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    path = tmp_path / "dashboard.png"
    env = dict(os.environ, MAS_REDIS_URL=redis_url)
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "dashboard_demo.py"), "--port", "0",
         "--screenshot", str(path)],
        cwd=root, env=env, capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 1280


def test_the_api_on_a_cluster(cluster: Any, make_agent: Callable[..., Any]) -> None:
    url = cluster.url
    worker = make_agent("worker", Failing, redis_url=url, **RELIABLE)
    sender = make_agent("sender", redis_url=url)
    worker.update_state({"phase": "one"})
    server = DashboardServer(url, port=0).start()
    try:
        status, body, _ = call(server.url + "api/agents")
        assert status == 200 and [a["id"] for a in body["agents"]] == ["sender", "worker"]
        call(server.url + "api/tail")  # starts the tail
        sender.send("worker", {"n": 1})
        wait_until(lambda: r_xlen(url, "agent.dlq:worker") == 1, 5, message="a dead letter")
        status, body, _ = call(server.url + "api/agents/worker")
        assert body["state"] == {"phase": "one"} and body["stream"]["dead_letters"] == 1
        assert len(body["dead_letters"]) == 1
        # The tail follows the reliable agent's stream (it rescans the registry every 2 s).
        wait_until(lambda: (sender.send("worker", {"n": 2}), any(
            e["target"] == "worker" for e in call(server.url + "api/tail")[1]["events"]))[1],
            8, 0.3, message="a message in the tail")
        # A cluster that cannot be reached is a 503, as a single node's is.
        for node in cluster.nodes:
            node.kill()
        status, body, _ = call(server.url + "api/agents/worker")
        assert status == 503 and "Redis" in body["error"], body
    finally:
        server.stop()
        for agent in (worker, sender):
            try:
                agent.stop(timeout=2)
            except Exception:  # noqa: BLE001 - with no node left, stop() may raise
                pass


def r_xlen(url: str, key: str) -> int:
    from mas_sync._redis import close_client, make_client

    client = make_client(url, 2)
    try:
        return int(client.xlen(key))
    finally:
        close_client(client)


@pytest.mark.slow
def test_serve_runs_until_sigterm(redis_url: str) -> None:
    import signal
    import subprocess
    import sys

    port = free_port()
    code = ("import sys; from mas_sync.dashboard import serve;"
            " serve(sys.argv[1], port=int(sys.argv[2]))")
    process = subprocess.Popen([sys.executable, "-c", code, redis_url, str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}/ (read-only)" in line
        assert call(f"http://127.0.0.1:{port}/api/agents")[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()
    # Redis that does not answer: a clear error, before anything listens.
    result = subprocess.run([sys.executable, "-c", code, "redis://127.0.0.1:1/0", str(port)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "MASConnectionError: cannot reach Redis" in result.stderr


def test_the_server_threads_are_named_and_stop(redis_url: str) -> None:
    server = DashboardServer(redis_url, port=0).start()
    try:
        assert call(server.url + "api/agents")[0] == 200
        names = {t.name for t in threading.enumerate()}
        assert "mas-dashboard-server" in names
        with pytest.raises(ListenError):
            DashboardServer(redis_url, port=int(server.url.rsplit(":", 1)[1].strip("/"))).start()
    finally:
        server.stop(timeout=5)
    assert not [t for t in threading.enumerate() if t.name.startswith("mas-dashboard")]
    with pytest.raises(ValueError):
        DashboardServer(redis_url, port=70000)
    with pytest.raises(TypeError):
        DashboardServer(redis_url, port="80")  # type: ignore[arg-type]


def test_selenium_is_kept_from_downloading(chromium: Tuple[str, str]) -> None:
    """With the driver's path given, Selenium Manager is skipped (it would fetch a driver)."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.driver_finder import DriverFinder

    options = Options()
    options.binary_location = chromium[0]
    if not hasattr(DriverFinder, "get_driver_path"):
        pytest.skip("this selenium finds drivers another way")
    finder = DriverFinder(Service(executable_path=chromium[1]), options)
    # Asked for the driver, it answers with ours, without Selenium Manager.
    finder._to_args = None  # type: ignore[method-assign] # would be called to run it
    assert finder.get_driver_path() == chromium[1]
    assert os.path.isfile(chromium[0])
