"""Servers run as subprocesses by the integration tests, always killed at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, List, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """A subprocess in a session (process group) of its own, output in a file."""

    def __init__(self, process: subprocess.Popen, log: Any) -> None:
        self.process = process
        self._log = log
        self._final: Optional[str] = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """What it printed so far (all of it, once the server has ended)."""
        if self._final is not None:
            return self._final
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pid {self.pid} did not exit within {timeout} s:\n{self.output()}")
            raise  # pragma: no cover


# Python turns SIGINT into KeyboardInterrupt only when it does not start with
# the signal ignored, and a shell ignores SIGINT for what it runs in the
# background (``pytest &``). The servers here are stopped with Ctrl-C, so they
# start through this prelude, which gives SIGINT its default back and then
# execs the real command line in the same process.
_SIGINT_PRELUDE = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@contextlib.contextmanager
def run_server(
    args: List[str], *, cwd: str = ROOT, env_extra: Optional[Dict[str, str]] = None
) -> Iterator[Server]:
    """Start ``python args...``; on the way out, kill its whole process group."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _SIGINT_PRELUDE, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = Server(process, log)
        try:
            yield server
        finally:
            if process.poll() is None:
                server.signal_group(signal.SIGKILL)
                process.wait(10)
            else:  # the leader is gone; end what it may have left in its group
                server.signal_group(signal.SIGKILL)
            server._final = server.output()


def http_get(url: str, timeout: float = 5.0) -> Any:
    """The body of a GET, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError, OSError):
        return None
