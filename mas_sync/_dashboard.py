"""The live web dashboard: one page and a few JSON endpoints, read from Redis alone.

:func:`make_app` returns the WSGI application (to mount in Flask, Django or
any WSGI server); :class:`DashboardServer` runs it on a threaded
``wsgiref`` server of the standard library, and :func:`serve` runs that in
the foreground until Ctrl-C or SIGTERM (``mas_sync dashboard``).

Everything shown is read from Redis: registrations, heartbeats and counters
through :mod:`mas_sync._overview`, state from ``agent.state:{id}``, dead
letters through :class:`~mas_sync._dead_letters.DeadLetters`, and messages
from a live tail (:class:`mas_sync._tail.Tail`, started at the first request
for it). So the page needs no agent's help and survives its own restart.

The endpoints (all answer JSON, errors as ``{"error": "..."}``):

- ``GET /api/agents``: every agent (INACTIVE ones too), with ``shown_status``
  ``ACTIVE``, ``STALE`` or ``INACTIVE``;
- ``GET /api/agents/{id}``: one agent, its state, and for a reliable agent
  its stream figures and first dead letters;
- ``GET /api/tail?after=N``: the messages seen after number ``N``;
- ``GET /api/dlq/{id}``: a reliable agent's dead letters;
- ``POST /api/dlq/{id}/requeue`` and ``POST /api/dlq/{id}/purge`` (a body
  ``{"ids": [...]}`` picks some, none means all): 403 unless the app allows
  actions, and 403 for a request from another origin.
"""

from __future__ import annotations

import http
import ipaddress
import json
import logging
import socket
import socketserver
import threading
import time
import uuid
from importlib import resources
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from . import _json, _wire
from ._dead_letters import DeadLetter, DeadLetters
from ._errors import AgentNotRunningError, ListenError, MASConnectionError
from ._overview import AgentView, agent_view, list_agents, read_state, stream_view
from ._redis import (
    ANY_REDIS_ERROR, check_redis_url, close_client, make_client, ping, redact_text, redact_url,
)
from ._tail import Tail

log = logging.getLogger(__name__)

#: The page, a package data file.
PAGE_FILE = "_dashboard_page.html"
#: Dead letters shown with an agent (``/api/dlq/{id}?count=N`` reads up to MAX_COUNT).
DEAD_LETTERS_SHOWN = 50
#: The most dead letters or tail events one answer holds.
MAX_COUNT = 1000
#: The stream figures of a reliable agent that has no stream yet.
EMPTY_STREAM: Dict[str, Any] = {
    "length": 0, "pending": 0, "lag": None, "consumers": [], "dead_letters": 0,
}
#: Messages the live tail keeps for the pages polling it.
TAIL_LENGTH = 1000
#: Characters of a dead letter's envelope (and payload) shown.
ENVELOPE_SHOWN = 400
#: Bytes of a request body read at most.
MAX_BODY = 64 * 1024
#: Redis connections of one app.
MAX_CONNECTIONS = 16
#: Seconds a request's socket may stay silent before its thread gives up.
REQUEST_TIMEOUT = 10.0

_Start = Callable[..., Any]
_Answer = Tuple[int, Any, List[Tuple[str, str]]]

_PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    # Nothing from elsewhere: no script, style, font or image from the network.
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
     " connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none';"
     " frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


class _HTTPError(Exception):
    """An answer other than 200, with its JSON error."""

    def __init__(
        self, status: int, message: str, headers: Optional[List[Tuple[str, str]]] = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


class DashboardApp:
    """The dashboard's WSGI application (see :func:`make_app`).

    Requests run in the server's threads, several at once; the app holds one
    Redis client (a pool) and one live tail for all of them.

    Args:
        redis_url: The deployment's Redis (every URL form of mas_sync).
        allow_actions: Whether requeue and purge are allowed.
        allowed_hosts: The host names that requests may name (their ``Host``
            header), None for any. A server bound to a loopback address
            allows loopback names only, so that a page elsewhere cannot
            reach it through a name of its own that resolves to 127.0.0.1.

    Raises:
        ValueError: ``redis_url`` is not a Redis URL.
        TypeError: ``allow_actions`` is not a bool.
    """

    def __init__(
        self,
        redis_url: str,
        allow_actions: bool = False,
        *,
        allowed_hosts: Optional[Iterable[str]] = None,
    ) -> None:
        if not isinstance(allow_actions, bool):
            raise TypeError(f"allow_actions must be a bool, not {allow_actions!r}")
        self.redis_url = redis_url
        self.allow_actions = allow_actions
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self._client = make_client(
            redis_url, MAX_CONNECTIONS, decode=False, client_name="mas-dashboard"
        )
        self._page = _load_page()
        self._tail: Optional[Tail] = None
        self._tail_lock = threading.Lock()
        self._closed = False
        # Changes with each app: a page polling the tail starts over after a restart.
        self.epoch = uuid.uuid4().hex

    # --- WSGI -----------------------------------------------------------------

    def __call__(self, environ: Dict[str, Any], start_response: _Start) -> List[bytes]:
        """Answer one request (in the server's request thread)."""
        try:
            status, body, headers = self._route(environ)
        except _HTTPError as exc:
            status, body, headers = exc.status, {"error": str(exc)}, exc.headers
        except ANY_REDIS_ERROR as exc:  # RedisClusterException is no RedisError
            log.warning("dashboard: Redis failed: %s", exc)
            status, body, headers = 503, {"error": f"Redis: {_redacted(exc, self.redis_url)}"}, []
        except MASConnectionError as exc:
            status, body, headers = 503, {"error": _redacted(exc, self.redis_url)}, []
        except Exception:  # noqa: BLE001 - a page, never a traceback
            log.exception("dashboard: %s %s failed", environ.get("REQUEST_METHOD"),
                          environ.get("PATH_INFO"))
            status, body, headers = 500, {"error": "internal error (see the dashboard's log)"}, []
        if isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body, separators=(",", ":"), default=str).encode("utf-8")
            headers = [("Content-Type", "application/json; charset=utf-8"),
                       ("Cache-Control", "no-store"),
                       ("X-Content-Type-Options", "nosniff")] + list(headers)
        headers.append(("Content-Length", str(len(data))))
        reason = http.HTTPStatus(status).phrase
        start_response(f"{status} {reason}", headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [data]

    def close(self, timeout: float = 5.0) -> None:
        """Stop the live tail and close the Redis client (idempotent)."""
        with self._tail_lock:
            self._closed = True
            tail, self._tail = self._tail, None
        if tail is not None:
            tail.stop(timeout=timeout)
        close_client(self._client)

    # --- routing --------------------------------------------------------------

    def _route(self, environ: Dict[str, Any]) -> _Answer:
        method = environ.get("REQUEST_METHOD", "GET")
        self._check_host(environ)
        try:
            path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise _HTTPError(400, "the path is not UTF-8") from None
        if path == "":
            target = environ.get("SCRIPT_NAME", "") + "/"
            return 308, b"", [("Location", target)]
        if path in ("/", "/index.html"):
            _allow(method, "GET")
            return 200, self._page, list(_PAGE_HEADERS)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if path == "/api/agents":
            _allow(method, "GET")
            return 200, self._agents(), []
        if path.startswith("/api/agents/"):
            _allow(method, "GET")
            return 200, self._agent(_agent_id(path[len("/api/agents/"):])), []
        if path == "/api/tail":
            _allow(method, "GET")
            return 200, self._tail_events(_int_arg(query, "after", 0, 0)), []
        if path.startswith("/api/dlq/"):
            rest = path[len("/api/dlq/"):]
            if method == "POST":
                for action in ("requeue", "purge"):
                    if rest.endswith("/" + action):
                        agent_id = _agent_id(rest[:-len(action) - 1])
                        self._check_action(environ)
                        return 200, self._act(action, agent_id, _body(environ)), []
                raise _HTTPError(405, "POST only to /api/dlq/{id}/requeue or /purge",
                                 [("Allow", "GET, HEAD")])
            _allow(method, "GET")
            count = _int_arg(query, "count", DEAD_LETTERS_SHOWN, 1)
            return 200, self._dead_letters(_agent_id(rest), min(count, MAX_COUNT)), []
        raise _HTTPError(404, f"no such page: {path}")

    def _check_host(self, environ: Dict[str, Any]) -> None:
        if self.allowed_hosts is None:
            return
        host = _host_name(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
        if host not in self.allowed_hosts:
            raise _HTTPError(403, f"host {host!r} is not served here")

    def _check_action(self, environ: Dict[str, Any]) -> None:
        if not self.allow_actions:
            raise _HTTPError(403, "actions are not allowed: start the dashboard with them allowed")
        fetch_site = environ.get("HTTP_SEC_FETCH_SITE")
        if fetch_site not in (None, "same-origin", "none"):
            raise _HTTPError(403, f"a request from another site ({fetch_site}) is refused")
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return  # not from a browser page (a browser sends Origin with every POST)
        host = environ.get("HTTP_HOST") or "{}:{}".format(
            environ.get("SERVER_NAME", ""), environ.get("SERVER_PORT", ""))
        own = "{}://{}".format(environ.get("wsgi.url_scheme", "http"), host)
        if origin.lower().rstrip("/") != own.lower():
            raise _HTTPError(403, f"a request from another origin ({origin}) is refused")

    # --- answers --------------------------------------------------------------

    def _agents(self) -> Dict[str, Any]:
        now = time.time()
        views = list_agents(self._client, include_inactive=True)
        return {
            "now": now, "actions": self.allow_actions, "redis": redact_url(self.redis_url),
            "agents": [_agent_json(view, now) for view in views],
        }

    def _agent(self, agent_id: str) -> Dict[str, Any]:
        view = agent_view(self._client, agent_id)
        if view is None:
            raise _HTTPError(404, f"no agent {agent_id!r} is registered")
        now = time.time()
        state = {k: _state_value(v) for k, v in read_state(self._client, agent_id).items()}
        answer: Dict[str, Any] = {
            "now": now, "actions": self.allow_actions, "agent": _agent_json(view, now),
            "state": state, "stream": None, "dead_letters": None,
        }
        if view.delivery == _wire.DELIVERY_RELIABLE:
            stream = stream_view(self._client, agent_id)
            answer["stream"] = stream.to_json() if stream is not None else EMPTY_STREAM
            letters = DeadLetters(self._client, agent_id).list(DEAD_LETTERS_SHOWN)
            answer["dead_letters"] = [_dead_letter_json(d) for d in letters]
        return answer

    def _dead_letters(self, agent_id: str, count: int) -> Dict[str, Any]:
        dead = DeadLetters(self._client, agent_id)
        total = int(self._client.xlen(dead.dlq))
        if total == 0 and agent_view(self._client, agent_id) is None:
            raise _HTTPError(
                404, f"no agent {agent_id!r} is registered, and it has no dead letters")
        return {
            "agent_id": agent_id, "count": total, "actions": self.allow_actions,
            "dead_letters": [_dead_letter_json(d) for d in dead.list(count)],
        }

    def _act(self, action: str, agent_id: str, body: Dict[str, Any]) -> Dict[str, Any]:
        ids = body.get("ids")
        if ids is not None and not (
            isinstance(ids, list) and all(isinstance(i, str) and _wire.is_stream_id(i) for i in ids)
        ):
            raise _HTTPError(400, "ids must be a list of dead-letter ids")
        dead = DeadLetters(self._client, agent_id)
        if action == "requeue":
            count = dead.requeue(ids)
            log.info("dashboard: requeued %d dead letters of %s", count, agent_id)
            return {"agent_id": agent_id, "requeued": count}
        count = dead.purge(ids)
        log.info("dashboard: purged %d dead letters of %s", count, agent_id)
        return {"agent_id": agent_id, "purged": count}

    def _tail_events(self, after: int) -> Dict[str, Any]:
        tail = self._live_tail()
        last, events = tail.events(after)
        return {"epoch": self.epoch, "last": last,
                "events": [event.to_json() for event in events[-MAX_COUNT:]]}

    def _live_tail(self) -> Tail:
        """The app's tail, started at the first call (MASConnectionError if Redis is down)."""
        with self._tail_lock:
            if self._closed:
                raise _HTTPError(503, "the dashboard is stopping")
            if self._tail is None:
                tail = Tail(self.redis_url, maxlen=TAIL_LENGTH)
                tail.start()
                self._tail = tail
            return self._tail


def make_app(redis_url: str, allow_actions: bool = False) -> DashboardApp:
    """The dashboard as a WSGI application, to mount in Flask, Django or any WSGI server.

    Mounted under a prefix (``SCRIPT_NAME``), the page is at the prefix with
    a trailing slash. Call its ``close()`` at shutdown (it stops the tail).
    Where it is reachable from other machines, protect it as any admin page
    (its data are the deployment's agents, state and messages).

    Args:
        redis_url: The deployment's Redis (every URL form of mas_sync).
        allow_actions: Whether the page may requeue and purge dead letters.

    Raises:
        ValueError: ``redis_url`` is not a Redis URL.
        TypeError: ``allow_actions`` is not a bool.
    """
    return DashboardApp(redis_url, allow_actions)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A wsgiref server with a thread per request, each named, daemon, and joined at stop."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: Tuple[str, int], family: int) -> None:
        self.address_family = family
        self._requests: Dict[threading.Thread, socket.socket] = {}
        self._requests_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run_request, args=(request, client_address),
            name="mas-dashboard-request", daemon=True,
        )
        with self._requests_lock:
            self._requests[thread] = request
        thread.start()

    def _run_request(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._requests_lock:
                self._requests.pop(threading.current_thread(), None)

    def close_requests(self, timeout: float) -> None:
        """Cut the connections still open, and join their threads within ``timeout``."""
        with self._requests_lock:
            running = list(self._requests.items())
        for _thread, request in running:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread, _request in running:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("dashboard: connection from %s failed", client_address, exc_info=True)


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, quiet (requests logged at DEBUG), with a socket timeout."""

    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("dashboard: %s " + format, self.address_string(), *args)


class DashboardServer:
    """The dashboard on a threaded ``wsgiref`` server, in threads of its own.

    Args:
        redis_url: The deployment's Redis (every URL form of mas_sync).
        host: The address to listen on; the default serves this machine only.
        port: The port; 0 picks a free one (see :attr:`url`).
        allow_actions: Whether the page may requeue and purge dead letters.

    Raises:
        ValueError: ``redis_url`` is not a Redis URL, or ``port`` is out of range.
        TypeError: an argument has the wrong type.
    """

    def __init__(self, redis_url: str, host: str = "127.0.0.1", port: int = 8765,
                 allow_actions: bool = False) -> None:
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, not {host!r}")
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"port must be an int, not {port!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be from 0 to 65535, not {port}")
        self.redis_url = redis_url
        self.host = host
        self.port = port
        self.allow_actions = allow_actions
        self.app: Optional[DashboardApp] = None
        self._server: Optional[_ThreadingServer] = None
        self._thread: Optional[threading.Thread] = None
        if not isinstance(allow_actions, bool):
            raise TypeError(f"allow_actions must be a bool, not {allow_actions!r}")
        check_redis_url(redis_url)

    @property
    def url(self) -> str:
        """The page's URL (with the port picked when ``port`` was 0).

        Raises:
            AgentNotRunningError: the server is not started.
        """
        if self._server is None:
            raise AgentNotRunningError("the dashboard server is not started")
        host, port = self._server.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    @property
    def running(self) -> bool:
        """Whether the server is started and not stopped."""
        return self._server is not None

    def start(self) -> "DashboardServer":
        """Listen, and serve in a thread ``mas-dashboard-server``; returns self.

        Starting a started server does nothing.

        Raises:
            ListenError: the address cannot be listened on (a port in use).
        """
        if self._server is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        app = DashboardApp(self.redis_url, self.allow_actions,
                           allowed_hosts=_allowed_hosts(self.host))
        try:
            server = _ThreadingServer((self.host, self.port), family)
        except OSError as exc:
            app.close()
            raise ListenError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        server.set_app(app)
        self.app, self._server = app, server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="mas-dashboard-server", daemon=True,
        )
        self._thread.start()
        log.info("dashboard on %s (%s)", self.url,
                 "actions allowed" if self.allow_actions else "read-only")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, cut open connections, stop the tail; join each thread in ``timeout``."""
        server, thread, app = self._server, self._thread, self.app
        if server is None:
            return
        deadline = time.monotonic() + timeout
        server.shutdown()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        server.server_close()
        server.close_requests(max(0.0, deadline - time.monotonic()))
        if app is not None:
            app.close(max(0.1, deadline - time.monotonic()))
        self._server = self._thread = None
        self.app = None

    def __enter__(self) -> "DashboardServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(redis_url: str, host: str = "127.0.0.1", port: int = 8765,
          allow_actions: bool = False) -> None:
    """Serve the dashboard until Ctrl-C or SIGTERM (call it from the main thread).

    Checks first that Redis answers; prints the page's URL.

    Args:
        redis_url: The deployment's Redis (every URL form of mas_sync).
        host: The address to listen on (``0.0.0.0`` for every interface:
            anyone who reaches it sees the agents, their state and messages).
        port: The port (0 picks a free one).
        allow_actions: Whether the page may requeue and purge dead letters.

    Raises:
        ValueError: a bad URL or port, or not called from the main thread.
        TypeError: an argument has the wrong type.
        MASConnectionError: Redis does not answer.
        ListenError: the address cannot be listened on.
    """
    from .signals import stop_on_signals

    server = DashboardServer(redis_url, host, port, allow_actions)
    client = make_client(redis_url, 1, decode=False)
    try:
        ping(client, redis_url)
    finally:
        close_client(client)
    stop = stop_on_signals(exit_process=False)
    try:
        server.start()
        mode = "requeue and purge allowed" if allow_actions else "read-only"
        print(f"mas_sync dashboard on {server.url} ({mode}); Ctrl-C stops it", flush=True)
        stop.wait()
    finally:
        server.stop()
        stop.restore()


# --- helpers -------------------------------------------------------------------


def _load_page() -> bytes:
    return resources.files(__package__).joinpath(PAGE_FILE).read_bytes()


def _allow(method: str, allowed: str) -> None:
    if method not in (allowed, "HEAD" if allowed == "GET" else allowed):
        raise _HTTPError(405, f"method {method} is not allowed here",
                         [("Allow", "GET, HEAD" if allowed == "GET" else allowed)])


def _agent_id(text: str) -> str:
    try:
        return _wire.validate_agent_id(text)
    except (TypeError, ValueError) as exc:
        raise _HTTPError(400, str(exc)) from None


def _int_arg(query: Dict[str, List[str]], name: str, default: int, least: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise _HTTPError(400, f"{name} must be an integer, not {values[-1]!r}") from None
    if value < least:
        raise _HTTPError(400, f"{name} must be at least {least}, not {value}")
    return value


def _body(environ: Dict[str, Any]) -> Dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise _HTTPError(400, "bad Content-Length") from None
    if length > MAX_BODY:
        raise _HTTPError(413, f"a body of at most {MAX_BODY} bytes")
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    if not raw.strip():
        return {}
    try:
        body = _json.loads_strict(raw)
    except (ValueError, UnicodeDecodeError):
        raise _HTTPError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _HTTPError(400, "the body must be a JSON object")
    return body


def _host_name(host: str) -> str:
    """The name of a ``Host`` header, without the port, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _allowed_hosts(bind: str) -> Optional[Set[str]]:
    """The names a server bound to ``bind`` answers to: loopback names for a loopback address."""
    try:
        loopback = ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        loopback = bind.lower() == "localhost"
    if not loopback:
        return None
    return {"localhost", "127.0.0.1", "::1", bind.strip("[]").lower()}


def _state_value(text: str) -> Any:
    """A state field as stored: dicts and lists are JSON, the rest text."""
    if text[:1] in ("{", "["):
        try:
            return _json.loads_strict(text)
        except ValueError:
            pass
    return text


def _redacted(exc: BaseException, url: str) -> str:
    return redact_text(str(exc), url)


def _agent_json(view: AgentView, now: float) -> Dict[str, Any]:
    data = view.to_json(now)
    data["shown_status"] = view.shown_status
    return data


def _dead_letter_json(letter: DeadLetter) -> Dict[str, Any]:
    message = letter.message
    payload = None
    if message is not None:
        payload = json.dumps(message.payload, ensure_ascii=False, default=str)
        if len(payload) > ENVELOPE_SHOWN:
            payload = payload[:ENVELOPE_SHOWN - 1] + "…"
    return {
        "id": letter.id, "error": letter.error, "attempts": letter.attempts,
        "consumer": letter.consumer, "entry_id": letter.entry_id, "failed_at": letter.failed_at,
        "sender": None if message is None else message.sender_id,
        "message_id": None if message is None else message.message_id,
        "payload": payload,
        "envelope": letter.envelope[:ENVELOPE_SHOWN],
        "truncated": len(letter.envelope) > ENVELOPE_SHOWN,
    }

